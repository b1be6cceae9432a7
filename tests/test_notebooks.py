"""Every notebook runs top to bottom in a fresh kernel, through run_notebook.py, on the embedded digits."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith((".", "_")))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless(notebook):
    env = {**os.environ, "EXP_DATASET": "digits"}
    command = [sys.executable, str(ROOT / "run_notebook.py"), str(notebook), "--timeout", "300"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stdout.startswith("ok")
