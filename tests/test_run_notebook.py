"""run_notebook.py: headless runs, exit codes, and messages that say where a notebook broke."""
import os, subprocess, sys
from pathlib import Path
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def write_nb(path, *cells):
    made = [new_markdown_cell(c[1]) if isinstance(c, tuple) else new_code_cell(c) for c in cells]
    nbformat.write(new_notebook(cells=made, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), path)


def run(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "run_notebook.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture
def notebooks(tmp_path):
    write_nb(tmp_path / "01_good.ipynb", ("md", "# fine"), "x = 6 * 7", "print(x)")
    write_nb(tmp_path / "02_bad.ipynb", "y = 1", ("md", "text"), "z = y / 0  # divide\nprint(z)", "print('never')")
    write_nb(tmp_path / "03_after.ipynb", "import os\nprint(os.environ.get('EXP_PROBE'))\nopen('ran-03', 'w').close()")
    return tmp_path


def test_one_good_notebook_prints_a_line_and_exits_zero(notebooks):
    result = run(notebooks / "01_good.ipynb")
    assert result.returncode == 0, result.stderr
    line, = result.stdout.splitlines()
    assert line.startswith("ok") and "01_good.ipynb" in line and line.endswith("s")


def test_failure_names_notebook_cell_first_line_and_exception_and_stops(notebooks):
    result = run(notebooks)
    assert result.returncode == 1
    assert "02_bad.ipynb: cell 3 ('z = y / 0  # divide') failed: ZeroDivisionError: division by zero" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok") and lines[1].startswith("failed") and len(lines) == 2
    assert not (notebooks / "ran-03").exists()  # the later notebook did not run


def test_keep_going_runs_later_notebooks_and_still_fails(notebooks):
    result = run(notebooks, "--keep_going")
    assert result.returncode == 1
    assert [l.split()[0] for l in result.stdout.splitlines()] == ["ok", "failed", "ok"]
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


def test_cell_timeout_is_named(tmp_path):
    write_nb(tmp_path / "slow.ipynb", "import time\ntime.sleep(30)")
    result = run(tmp_path / "slow.ipynb", "--timeout", "2")
    assert result.returncode == 1
    assert "slow.ipynb: cell 1 ('import time') failed: timed out after 2s" in result.stderr


def test_missing_path_and_no_arguments_exit_2(tmp_path):
    result = run(tmp_path / "absent.ipynb")
    assert result.returncode == 2 and "absent.ipynb: no such notebook or folder" in result.stderr
    assert run().returncode == 2
