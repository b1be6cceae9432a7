"""`python docs/build.py` fails on a broken link and never executes a notebook."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_broken_link_fails_the_build_and_notebooks_are_not_run(tmp_path):
    pytest.importorskip("myst_nb")
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    notebook = json.loads((ROOT / "nbs" / "00_exports.ipynb").read_text(encoding="utf-8"))
    marker = tmp_path / "executed"
    notebook["cells"].append({"cell_type": "code", "id": "sideeffect", "metadata": {}, "outputs": [],
                              "execution_count": None, "source": [f"open({str(marker)!r}, 'w').close()"]})
    (nbs / "00_exports.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    build = [sys.executable, str(ROOT / "docs" / "build.py"), "--nbs", str(nbs)]

    good = subprocess.run(build + ["--out", str(tmp_path / "good")], capture_output=True, text=True,
                          timeout=600)
    assert good.returncode == 0, good.stderr[-3000:]
    assert (tmp_path / "good" / "nbs" / "00_exports.html").exists() and not marker.exists()

    notebook["cells"].append({"cell_type": "markdown", "id": "brokenlink", "metadata": {},
                              "source": ["Next: [the lesson after](99_nowhere.ipynb)."]})
    (nbs / "00_exports.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    bad = subprocess.run(build + ["--out", str(tmp_path / "bad")], capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0
    assert "99_nowhere" in bad.stderr and "site build failed" in bad.stderr, bad.stderr[-3000:]
