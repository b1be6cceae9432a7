"""run_notebook.py: headless runs, exit codes, and messages that say where a notebook broke."""
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def write_nb(path, *cells):
    made = [new_markdown_cell(c[1]) if isinstance(c, tuple) else new_code_cell(c) for c in cells]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(new_notebook(cells=made, metadata={"kernelspec": kernelspec}), path)


def run(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "run_notebook.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture
def notebooks(tmp_path):
    write_nb(tmp_path / "01_good.ipynb", ("md", "# fine"), "x = 6 * 7", "print(x)")
    write_nb(tmp_path / "02_bad.ipynb", "y = 1", ("md", "text"), "z = y / 0  # divide\nprint(z)",
             "print('never')")
    write_nb(tmp_path / "03_after.ipynb",
             "import os\nprint(os.environ.get('EXP_PROBE'))\nopen('ran-03', 'w').close()")
    return tmp_path


def test_one_good_notebook_prints_a_line_and_exits_zero(notebooks):
    result = run(notebooks / "01_good.ipynb")
    assert result.returncode == 0, result.stderr
    line, = result.stdout.splitlines()
    assert line.startswith("ok") and "01_good.ipynb" in line and line.endswith("s")


def test_failure_names_notebook_cell_first_line_and_exception_and_stops(notebooks):
    result = run(notebooks)
    assert result.returncode == 1
    expected = "02_bad.ipynb: cell 3 ('z = y / 0  # divide') failed: ZeroDivisionError: division by zero"
    assert expected in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok") and lines[1].startswith("failed") and len(lines) == 3
    assert re.fullmatch(r"summary: 1 ok, 1 failed, 1 not run, of 3 notebooks in \d+\.\ds", lines[2]), lines[2]
    assert not (notebooks / "ran-03").exists()  # the later notebook did not run


def test_keep_going_runs_later_notebooks_and_still_fails(notebooks):
    result = run(notebooks, "--keep_going")
    assert result.returncode == 1
    *statuses, summary = result.stdout.splitlines()
    assert [line.split()[0] for line in statuses] == ["ok", "failed", "ok"]
    match = re.fullmatch(r"summary: 2 ok, 1 failed, 0 not run, of 3 notebooks in (\d+\.\d)s", summary)
    total = float(match[1])
    each = [float(line.split()[-1].rstrip("s")) for line in statuses]
    assert sum(each) - 0.2 <= total < sum(each) + 30  # the whole run, not one notebook
    assert (notebooks / "ran-03").exists()  # notebooks run in their own folder


def test_environment_reaches_the_kernel(notebooks):
    out = notebooks / "03_after.ipynb"
    result = run(out, "--save", env={**os.environ, "EXP_PROBE": "from-the-shell"})
    assert result.returncode == 0, result.stderr
    saved = nbformat.read(out, as_version=4)
    assert saved.cells[0].outputs[0]["text"].strip() == "from-the-shell"


def test_save_writes_outputs_only_for_clean_runs(notebooks):
    run(notebooks / "01_good.ipynb", notebooks / "02_bad.ipynb", "--save", "--keep_going")
    good = nbformat.read(notebooks / "01_good.ipynb", as_version=4)
    bad = nbformat.read(notebooks / "02_bad.ipynb", as_version=4)
    assert good.cells[2].outputs[0]["text"] == "42\n"
    assert all(not c.get("outputs") for c in bad.cells if c.cell_type == "code")


def test_save_stamps_the_code_fingerprint_and_drops_volatile_metadata(notebooks):
    sys.path.insert(0, str(ROOT))
    from run_notebook import STAMP, code_fingerprint
    path = notebooks / "01_good.ipynb"
    before = nbformat.read(path, as_version=4)
    assert STAMP not in before.metadata
    assert run(path, "--save").returncode == 0
    saved = nbformat.read(path, as_version=4)
    assert saved.metadata[STAMP] == {"code_sha256": code_fingerprint(saved)}
    assert saved.metadata.get("language_info") == {"name": "python"}  # not the kernel's version details
    assert [c.execution_count for c in saved.cells if c.cell_type == "code"] == [1, 2]
    assert not any("execution" in c.metadata for c in saved.cells)
    # the fingerprint follows the code, not the outputs or the prose
    saved.cells[0].source = "# other prose"
    saved.cells[2].outputs = []
    assert code_fingerprint(saved) == saved.metadata[STAMP]["code_sha256"]
    saved.cells[2].source = "print(x + 1)"
    assert code_fingerprint(saved) != saved.metadata[STAMP]["code_sha256"]


def test_cell_timeout_is_named(tmp_path):
    write_nb(tmp_path / "slow.ipynb", "import time\ntime.sleep(30)")
    result = run(tmp_path / "slow.ipynb", "--timeout", "2")
    assert result.returncode == 1
    assert "slow.ipynb: cell 1 ('import time') failed: timed out after 2s" in result.stderr


def test_missing_path_and_no_arguments_exit_2(tmp_path):
    result = run(tmp_path / "absent.ipynb")
    assert result.returncode == 2 and "absent.ipynb: no such notebook or folder" in result.stderr
    assert run().returncode == 2


def test_the_tcp_warning_is_dropped_and_real_kernel_messages_are_shown(tmp_path):
    "ipykernel warns at every start over TCP: that line goes; what else the kernel logs or writes stays."
    write_nb(tmp_path / "logs.ipynb", "kernel = get_ipython().kernel\n"
             "kernel.log.error('a real kernel error: the disk is full')\n"
             "kernel.log.warning('Kernel is running low on memory')\n"
             "import os\nos.write(2, b'written to the kernel fd 2\\n')")
    result = run(tmp_path / "logs.ipynb", tmp_path / "logs.ipynb")
    assert result.returncode == 0, result.stderr
    assert "without encryption" not in result.stderr
    error = "[IPKernelApp] ERROR | a real kernel error: the disk is full"
    assert result.stderr.count(error) == 2  # one per run
    assert "[IPKernelApp] WARNING | Kernel is running low on memory" in result.stderr
    assert "written to the kernel fd 2" in result.stderr
    assert result.stdout.splitlines()[-1].startswith("summary: 2 ok, 0 failed, 0 not run, of 2 notebooks in ")


def test_a_kernel_that_dies_is_still_reported(tmp_path):
    write_nb(tmp_path / "dies.ipynb", "import os\nos._exit(3)")
    result = run(tmp_path / "dies.ipynb")
    assert result.returncode == 1
    assert "dies.ipynb: cell 1 ('import os') failed: the kernel died" in result.stderr
    assert "without encryption" not in result.stderr


def test_a_killed_kernel_is_reported_without_a_traceback(tmp_path):
    "SIGKILL (the out-of-memory killer's signal): one line naming the cell, not nbclient's traceback."
    write_nb(tmp_path / "killed.ipynb", "import os, signal\nprint(1)", "os.kill(os.getpid(), signal.SIGKILL)")
    result = run(tmp_path / "killed.ipynb")
    assert result.returncode == 1
    expected = "killed.ipynb: cell 2 ('os.kill(os.getpid(), signal.SIGKILL)') failed: the kernel died"
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and "out of memory" in result.stderr


def test_save_joins_a_run_of_prints_into_one_output(tmp_path):
    path = tmp_path / "prints.ipynb"
    write_nb(path, "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.05)\n"
                   "display('a table')\nprint('after')")
    assert run(path, "--save").returncode == 0
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert [o["output_type"] for o in outputs] == ["stream", "display_data", "stream"]
    assert (outputs[0]["text"], outputs[2]["text"]) == ("0\n1\n2\n", "after\n")
