#!/usr/bin/env python
"""Run notebooks headless, each top to bottom in a fresh kernel, and say clearly what failed.

    python run_notebook.py nbs                       # every notebook in the folder, in order
    python run_notebook.py nbs/01_matmul.ipynb --save
    python run_notebook.py nbs --keep_going --timeout 120

One line per notebook: its status, name and seconds. A failing cell is named by notebook, cell
number (counting every cell from 1, as they appear in JupyterLab), its first line and the exception;
the exit status is 1 when anything failed. Environment variables (e.g. `EXP_DATASET=mnist`) reach
the kernel. `--save` writes the executed outputs back into each notebook that ran cleanly.
"""
import os, re, sys, time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotebookFailure(Exception):
    "A notebook that did not run to the end; the message says where and why."


def find_notebooks(paths):
    "Notebook paths from files and folders (a folder gives its notebooks in name order)."
    found = []
    for path in map(Path, paths):
        if path.is_dir(): found += sorted(p for p in path.glob("*.ipynb") if not p.name.startswith((".", "_")))
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
    try:
        client.execute(env=kernel_environment())
    except CellExecutionError:
        index = current["index"]
        ename, evalue, traceback = error_of(nb.cells[index]) or ("Error", "", "")
        raise NotebookFailure(describe(path, nb, index, f"{ename}: {evalue}"), traceback) from None
    except CellTimeoutError:
        index = current["index"]
        raise NotebookFailure(describe(path, nb, index, f"timed out after {timeout}s (raise --timeout)"), "") from None
    except DeadKernelError as e:
        index = current["index"]
        raise NotebookFailure(describe(path, nb, index, f"the kernel died: {e}"), "") from None
    return nb


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
    failures = []
    for path in notebooks:
        start = time.perf_counter()
        try:
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
        if save:
            import nbformat
            nbformat.write(nb, path)
    if failures:
        print(f"run_notebook: {len(failures)} notebook(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    import fire
    fire.Fire(main)
