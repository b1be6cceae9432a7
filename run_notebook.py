#!/usr/bin/env python
"""Run notebooks headless, each top to bottom in a fresh kernel, and say clearly what failed.

    python run_notebook.py nbs                       # every notebook in the folder, in order
    python run_notebook.py nbs/01_matmul.ipynb --save
    python run_notebook.py nbs --keep_going --timeout 120

One line per notebook: its status, name and seconds; a run of several ends with a summary line
(ok, failed and not-run counts, total seconds). A failing cell is named by notebook, cell number
(counting every cell from 1, as they appear in JupyterLab), its first line and the exception; the
exit status is 1 when anything failed. The kernel's own stderr comes through, less the one line of
ipykernel's "Kernel is running over TCP without encryption" warning, which it printed at every start
(the kernel listens on 127.0.0.1, reachable from this machine only). Environment variables (e.g.
`EXP_DATASET=mnist`) reach the kernel.

`--save` writes the executed outputs back into each notebook that ran cleanly, as the committed
lessons carry them (`EXP_DATASET=digits python run_notebook.py nbs --save` regenerates them all). It
stamps the notebook's metadata with a fingerprint of its code cells, so a test can tell when code
changed after its outputs were saved, and drops what changes from run to run without meaning anything
(execution timestamps, the kernel's version details).
"""
import hashlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# ipykernel's kernelapp.py logs this at every start over TCP; only this line is dropped, nothing else it logs
TCP_WARNING = re.compile(r"^\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption\.")


STAMP = "foundations"  # the notebook-metadata key where --save records what the outputs were computed from


class NotebookFailure(Exception):
    "A notebook that did not run to the end; the message says where and why."


def find_notebooks(paths):
    "Notebook paths from files and folders (a folder gives its notebooks in name order)."
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.glob("*.ipynb") if not p.name.startswith((".", "_")))
        elif path.suffix == ".ipynb" and path.exists(): found.append(path)
        else: raise FileNotFoundError(f"{path}: no such notebook or folder")
    return found


def first_line(cell):
    source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    return source.strip().split("\n", 1)[0][:80]


def error_of(cell):
    "The error output of a cell as `(name, value, traceback text)`, or None."
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            traceback = ANSI_ESCAPE.sub("", "\n".join(out.get("traceback", [])))
            return out.get("ename", "Error"), out.get("evalue", ""), traceback
    return None


def kernel_environment():
    "The kernel sees our environment, plus the project on its path so `import exp` works uninstalled."
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(PROJECT_ROOT), env.get("PYTHONPATH")] if p)
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


def forward_kernel_stderr(read_fd, out):
    "Copy the kernel's stderr to `out` line by line, less the TCP warning, until the pipe closes."
    with open(read_fd, "rb") as pipe:
        for line in pipe:
            text = line.decode("utf-8", errors="replace")
            if not TCP_WARNING.match(text):
                out.write(text)
                out.flush()


def execute(path, timeout, kernel_name):
    "Run one notebook in a fresh kernel, in its own folder; the executed notebook, or NotebookFailure."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    nb = nbformat.read(path, as_version=4)
    current = {"index": None}
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}},
                            on_cell_start=lambda cell, cell_index: current.update(index=cell_index))
    read_fd, write_fd = os.pipe()  # the kernel's stderr, read by a thread that filters the TCP warning out
    forwarder = threading.Thread(target=forward_kernel_stderr, args=(read_fd, sys.stderr), daemon=True)
    forwarder.start()
    try:
        client.execute(env=kernel_environment(), stderr=write_fd)
    except CellExecutionError:
        index = current["index"]
        ename, evalue, traceback = error_of(nb.cells[index]) or ("Error", "", "")
        raise NotebookFailure(describe(path, nb, index, f"{ename}: {evalue}"), traceback) from None
    except CellTimeoutError:
        index = current["index"]
        reason = f"timed out after {timeout}s (raise --timeout)"
        raise NotebookFailure(describe(path, nb, index, reason), "") from None
    except (DeadKernelError, AssertionError) as e:
        # nbclient's clean-up after a dead kernel can fail an assertion of its own, hiding the real cause
        dead = e if isinstance(e, DeadKernelError) else e.__context__
        if not isinstance(dead, DeadKernelError): raise
        reason = f"the kernel died ({dead}): killed, or out of memory?"
        raise NotebookFailure(describe(path, nb, current["index"], reason), "") from None
    finally:
        os.close(write_fd)  # the kernel has exited: the forwarder reads to the end and stops
        forwarder.join(timeout=5)  # a process the notebook started may still hold the pipe: don't wait on it
    return nb


def code_fingerprint(nb):
    "The SHA-256 of a notebook's code cells, in order: what its saved outputs were computed from."
    def text(cell): return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    sources = [text(cell) for cell in nb["cells"] if cell["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


def coalesce_streams(cell):
    """Join consecutive stdout (or stderr) outputs into one, as JupyterLab shows them: one block per run of
    prints."""
    merged = []
    for output in cell.get("outputs", []):
        previous = merged[-1] if merged else None
        if (output["output_type"] == "stream" and previous is not None and previous["output_type"] == "stream"
                and previous["name"] == output["name"]):
            previous["text"] = "".join(previous["text"]) + "".join(output["text"])
        else:
            merged.append(output)
    cell["outputs"] = merged


def save_outputs(nb, path, language_info):
    "Write the executed notebook back: stamped with its code's fingerprint, without volatile metadata."
    import nbformat
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code": coalesce_streams(cell)
    nb.metadata["language_info"] = language_info  # the kernel adds its version and lexer details
    nb.metadata[STAMP] = {"code_sha256": code_fingerprint(nb)}
    nbformat.write(nb, path)


def describe(path, nb, index, reason):
    if index is None: return f"{path}: {reason}"
    return f"{path}: cell {index + 1} ({first_line(nb.cells[index])!r}) failed: {reason}"


def main(*paths, timeout=600, save=False, keep_going=False, kernel_name="python3", quiet=False):
    """Run notebooks (files or folders) headless, in order.

    --timeout SECONDS   per-cell limit (default 600)
    --save              write the executed outputs back into notebooks that ran cleanly
    --keep_going        run later notebooks after a failure (the exit status still says it failed)
    --quiet             no traceback after a failure, just the one-line reason
    """
    if not paths:
        print("run_notebook: give notebooks or folders, e.g. `python run_notebook.py nbs`", file=sys.stderr)
        sys.exit(2)
    try:
        notebooks = find_notebooks(paths)
    except FileNotFoundError as e:
        print(f"run_notebook: error: {e}", file=sys.stderr)
        sys.exit(2)
    failures, succeeded, started = [], 0, time.perf_counter()
    for path in notebooks:
        start = time.perf_counter()
        try:
            language_info = json.loads(path.read_text(encoding="utf-8"))["metadata"].get("language_info")
            nb = execute(path, timeout, kernel_name)
        except NotebookFailure as e:
            message, traceback = e.args
            print(f"failed  {path.name:<40} {time.perf_counter() - start:6.1f}s", flush=True)
            if traceback and not quiet: print(traceback, file=sys.stderr)
            print(f"run_notebook: {message}", file=sys.stderr, flush=True)
            failures.append(message)
            if not keep_going: break
            continue
        print(f"ok      {path.name:<40} {time.perf_counter() - start:6.1f}s", flush=True)
        succeeded += 1
        if save: save_outputs(nb, path, language_info or {"name": "python"})
    if len(notebooks) > 1:
        not_run = len(notebooks) - succeeded - len(failures)
        print(f"summary: {succeeded} ok, {len(failures)} failed, {not_run} not run, "
              f"of {len(notebooks)} notebooks in {time.perf_counter() - started:.1f}s", flush=True)
    if failures:
        listed = "\n  ".join(failures)
        print(f"run_notebook: {len(failures)} notebook(s) failed:\n  {listed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    import fire
    fire.Fire(main)
