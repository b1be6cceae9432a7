"""Committed notebooks are clean: valid nbformat 4.5+, the python3 kernelspec, cell ids, and no outputs.

Outputs and execution counts make every diff noisy and are stale the moment the code changes; a
reader runs the notebook (or `python run_notebook.py NB --save` for a local copy with outputs).
A notebook with a kernelspec named `python3` opens in JupyterLab without a kernel-selection dialog.
"""
import json
from pathlib import Path

import nbformat
import pytest

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith((".", "_")))
CLEAN_IT = ("rebuild it from its source (python /work/tools/py2nb.py SRC.py nbs/NB.ipynb) or clear it "
            "(jupyter nbconvert --clear-output --inplace nbs/NB.ipynb)")


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NBS}"


def problems_of(path):
    "Every way the notebook at `path` is not clean, as readable lines."
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("nbformat") != 4 or raw.get("nbformat_minor", 0) < 5:
        return [f"nbformat {raw.get('nbformat')}.{raw.get('nbformat_minor')}, want 4.5+ (cell ids)"]
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
    found = []
    try: nbformat.validate(nb)
    except nbformat.ValidationError as e: found.append(f"invalid nbformat: {str(e).splitlines()[0]}")
    kernelspec = raw.get("metadata", {}).get("kernelspec", {})
    if kernelspec.get("name") != "python3":
        found.append(f"kernelspec name is {kernelspec.get('name')!r}, want 'python3'")
    if not kernelspec.get("display_name") or kernelspec.get("language") != "python":
        found.append(f"kernelspec needs a display_name and language 'python': {kernelspec}")
    ids = [cell.get("id") for cell in raw["cells"]]
    if not all(ids): found.append(f"{ids.count(None) + ids.count('')} cell(s) without an id")
    elif len(set(ids)) != len(ids): found.append("cell ids are not unique")
    for number, cell in enumerate(raw["cells"], 1):
        if cell["cell_type"] != "code": continue
        if cell.get("outputs"): found.append(f"cell {number} has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {number} has execution_count {cell['execution_count']}")
        if "execution" in cell.get("metadata", {}): found.append(f"cell {number} has execution timestamps")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    problems = problems_of(path)
    assert not problems, f"nbs/{path.name} is not clean; {CLEAN_IT}:\n- " + "\n- ".join(problems)


def test_the_check_can_fail(tmp_path):
    "A notebook with outputs, counts, no ids and another kernel is reported on each count."
    nb = {"nbformat": 4, "nbformat_minor": 4, "metadata": {"kernelspec": {"name": "python2"}},
          "cells": [{"cell_type": "code", "source": "1", "metadata": {}, "execution_count": 1,
                     "outputs": [{"output_type": "execute_result", "execution_count": 1,
                                  "data": {"text/plain": "1"}, "metadata": {}}]}]}
    path = tmp_path / "dirty.ipynb"
    path.write_text(json.dumps(nb))
    assert problems_of(path) == ["nbformat 4.4, want 4.5+ (cell ids)"]
    nb["nbformat_minor"] = 5
    nb["cells"][0]["id"] = "a1"
    path.write_text(json.dumps(nb))
    problems = "\n".join(problems_of(path))
    for expected in ("kernelspec name is 'python2'", "cell 1 has 1 output(s)", "cell 1 has execution_count 1"):
        assert expected in problems, problems
