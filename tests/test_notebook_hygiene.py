"""Committed notebooks are clean and carry fresh outputs: valid nbformat 4.5+, the python3 kernelspec, cell
ids, and the outputs of one top-to-bottom run of their current code on the embedded digits.

A reader on GitHub, in JupyterLab before running, or on the course website sees the plots and tables the
prose points at. The outputs can never go stale: `run_notebook.py --save` stamps the notebook with a
fingerprint of its code cells, and a notebook whose code changed since is reported here. Volatile metadata
(execution timestamps, kernel ids) is stripped, so that diffs show what changed in the lesson.
"""
import base64
import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from run_notebook import STAMP, code_fingerprint  # noqa: E402

NBS = ROOT / "nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith((".", "_")))
MAX_IMAGE_BYTES = 200_000   # a plot at the inline backend's size is 20-80 kB
MAX_NBS_BYTES = 10_000_000  # the whole of nbs/, outputs included
REGENERATE = "regenerate its outputs: python run_notebook.py nbs/{name} --save"


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NBS}"


def problems_of(path):
    "Every way the notebook at `path` is not clean or not fresh, as readable lines."
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("nbformat") != 4 or raw.get("nbformat_minor", 0) < 5:
        return [f"nbformat {raw.get('nbformat')}.{raw.get('nbformat_minor')}, want 4.5+ (cell ids)"]
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
    found = []
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        found.append(f"invalid nbformat: {str(e).splitlines()[0]}")
    kernelspec = raw.get("metadata", {}).get("kernelspec", {})
    if kernelspec.get("name") != "python3":
        found.append(f"kernelspec name is {kernelspec.get('name')!r}, want 'python3'")
    if not kernelspec.get("display_name") or kernelspec.get("language") != "python":
        found.append(f"kernelspec needs a display_name and language 'python': {kernelspec}")
    ids = [cell.get("id") for cell in raw["cells"]]
    if not all(ids):
        found.append(f"{ids.count(None) + ids.count('')} cell(s) without an id")
    elif len(set(ids)) != len(ids):
        found.append("cell ids are not unique")
    stamp = raw.get("metadata", {}).get(STAMP, {}).get("code_sha256")
    if stamp is None:
        found.append("it carries no saved outputs (no code fingerprint in its metadata)")
    elif stamp != code_fingerprint(raw):
        found.append("its outputs are stale: its code changed since they were saved")
    code = [cell for cell in raw["cells"] if cell["cell_type"] == "code"]
    counts = [cell.get("execution_count") for cell in code]
    if counts != list(range(1, len(code) + 1)):
        found.append(f"execution counts {counts} are not one run from the top (1..{len(code)})")
    for number, cell in enumerate(raw["cells"], 1):
        if "execution" in cell.get("metadata", {}):
            found.append(f"cell {number} has execution timestamps")
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                found.append(f"cell {number} shows an error: {output.get('ename')}: {output.get('evalue')}")
            png = output.get("data", {}).get("image/png")
            if png and len(base64.b64decode(png)) > MAX_IMAGE_BYTES:
                found.append(f"cell {number} has a {len(base64.b64decode(png)) // 1000} kB image "
                             f"(at most {MAX_IMAGE_BYTES // 1000} kB: a smaller figure or dpi)")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_its_outputs_are_fresh(path):
    problems = problems_of(path)
    where = f"nbs/{path.name}: " + REGENERATE.format(name=path.name)
    assert not problems, where + "\n- " + "\n- ".join(problems)


def test_nbs_stays_small():
    total = sum(p.stat().st_size for p in NBS.rglob("*") if p.is_file())
    assert total < MAX_NBS_BYTES, f"nbs/ holds {total / 1e6:.1f} MB, over {MAX_NBS_BYTES / 1e6:.0f} MB"


def fresh_notebook():
    "A notebook as `run_notebook.py --save` leaves it: one cell, its output, the fingerprint."
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "cells": [{"cell_type": "code", "id": "a1", "source": "1 + 1", "metadata": {}, "execution_count": 1,
                     "outputs": [{"output_type": "execute_result", "execution_count": 1,
                                  "data": {"text/plain": "2"}, "metadata": {}}]}]}
    nb["metadata"][STAMP] = {"code_sha256": code_fingerprint(nb)}
    return nb


def test_the_check_passes_a_fresh_notebook_and_names_each_problem(tmp_path):
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(fresh_notebook()))
    assert problems_of(path) == []

    stale = fresh_notebook()
    stale["cells"][0]["source"] = "1 + 2"  # the code changed, the output did not
    path.write_text(json.dumps(stale))
    assert problems_of(path) == ["its outputs are stale: its code changed since they were saved"]

    never_run = fresh_notebook()
    never_run["cells"][0].update(execution_count=None, outputs=[])
    del never_run["metadata"][STAMP]
    path.write_text(json.dumps(never_run))
    problems = "\n".join(problems_of(path))
    assert "no saved outputs" in problems and "not one run from the top" in problems

    dirty = fresh_notebook()
    dirty["metadata"]["kernelspec"]["name"] = "python2"
    dirty["cells"][0]["metadata"]["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    dirty["cells"][0]["outputs"] = [{"output_type": "error", "ename": "ValueError", "evalue": "bad",
                                     "traceback": []}]
    path.write_text(json.dumps(dirty))
    problems = "\n".join(problems_of(path))
    for expected in ("kernelspec name is 'python2'", "cell 1 has execution timestamps",
                     "cell 1 shows an error: ValueError: bad"):
        assert expected in problems, problems

    old = fresh_notebook()
    old["nbformat_minor"] = 4
    path.write_text(json.dumps(old))
    assert problems_of(path) == ["nbformat 4.4, want 4.5+ (cell ids)"]
