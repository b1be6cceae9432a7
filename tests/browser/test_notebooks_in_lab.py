"""The notebooks as a reader sees them: opened in JupyterLab in headless Chromium, then Run ▸ Run All Cells.

    python -m pytest -m browser tests/browser -q                     # the default subset
    BROWSER_NOTEBOOKS=all python -m pytest -m browser tests/browser  # every notebook in nbs/
    BROWSER_NOTEBOOKS=01_matmul,12_rnn python -m pytest -m browser tests/browser

For each notebook: no dialog pops up on opening, every code cell gets an execution count, no output
shows an exception, the plots are decoded `<img>` elements (not `<Figure size ...>` text), and a
notebook that trains with fastprogress shows a `<progress>` bar that reaches its end. A screenshot of
the whole notebook and a timing table go to `test-artifacts/browser/`.
"""
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NBS = PROJECT_ROOT / "nbs"
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"  # the conftest's server log goes there too


@dataclass(frozen=True)
class Expect:
    "What a reader must see after Run All. `images`: at least this many plots; `progress`: a fastprogress bar"
    images: int = 0
    progress: bool = False
    timeout: float = 180  # seconds for Run All; 2 busy cores make a 20 s notebook take 60
    known_issue: str = ""  # a reported bug the page shows: the test is xfail until it is fixed


# Per-notebook expectations. A notebook not listed gets `expect_from_source` (plots when its
# non-export cells call matplotlib, a bar when they use fastprogress); list it to be exact.
EXPECTATIONS = {
    "00_exports": Expect(),
    "00c_data": Expect(images=1),
    "01_matmul": Expect(images=1),
    # the loss curve; its printed errors are outputs, not exceptions; dozens of small fits, slow on busy cores
    "04_learner": Expect(images=1, timeout=600),
    "09c_progress": Expect(images=1, progress=True),
}
# Run by default (all of nbs/ takes longer than five minutes on 2 shared cores; see the timings).
DEFAULT_NOTEBOOKS = ["00_exports", "00c_data", "01_matmul", "04_learner", "09c_progress"]


def selected_notebooks():
    "`$BROWSER_NOTEBOOKS`: `all`, or names separated by commas; default DEFAULT_NOTEBOOKS."
    choice = os.environ.get("BROWSER_NOTEBOOKS", "").strip()
    if choice == "all": return {p.stem for p in NBS.glob("*.ipynb")}
    if choice: return {name.strip().removesuffix(".ipynb") for name in choice.split(",") if name.strip()}
    return set(DEFAULT_NOTEBOOKS)


def all_names():
    "Every notebook in nbs/ and every one named in the lists, in syllabus (name) order."
    names = {p.stem for p in NBS.glob("*.ipynb") if not p.name.startswith((".", "_"))}
    return sorted(names | set(DEFAULT_NOTEBOOKS) | selected_notebooks())


def read_notebook(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def source(cell):
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def first_line(cell):
    lines = source(cell).strip().splitlines()
    return lines[0][:60] if lines else ""


def is_export(cell):
    return bool(re.match(r"\s*#\s*\|?\s*export", source(cell)))


def expect_from_source(nb):
    "A guess from the code a reader runs (export cells only define things)."
    code = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "code" and not is_export(c))
    code = re.sub(r"#.*", "", code)
    plots = re.search(r"\bplt\.|\.plot\(|\bshow_\w+\(|\bplot_\w+\(", code)
    bars = re.search(r"\b(progress_bar|master_bar|ProgressCallback)\(", code)
    return Expect(images=1 if plots else 0, progress=bool(bars))


# ---- reading the page ---------------------------------------------------------------------------

NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"

WATCH_PROGRESS = """() => {
  // Record every <progress> the outputs ever show: a master bar replaces itself with its table at the end.
  window.__progress = [];
  const seen = el => window.__progress.push({value: Number(el.getAttribute('value')),
      max: Number(el.getAttribute('max')), interrupted: el.classList.contains('progress-bar-interrupted')});
  new MutationObserver(mutations => { for (const m of mutations) for (const n of m.addedNodes) {
      if (n.nodeType !== 1) continue;
      if (n.tagName === 'PROGRESS') seen(n);
      n.querySelectorAll('progress').forEach(seen);
  }}).observe(document.body, {childList: true, subtree: true});
}"""

RUN_STATE = """(sel) => {
  const panel = document.querySelector(sel);
  if (!panel) return null;
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const prompts = Array.from(panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))
      .map(e => e.textContent.trim());
  return {status: indicator && indicator.getAttribute('data-status'), prompts};
}"""

REPORT = """(sel) => {
  const panel = document.querySelector(sel);
  const cells = Array.from(panel.querySelectorAll('.jp-CodeCell')).map((cell, i) => {
    const outputs = Array.from(cell.querySelectorAll('.jp-OutputArea-output')).map(o => ({
      mime: o.getAttribute('data-mime-type') || '', text: o.innerText.slice(0, 2000),
      images: Array.from(o.querySelectorAll('img'))
          .map(img => ({complete: img.complete, width: img.naturalWidth})),
    }));
    return {prompt: cell.querySelector('.jp-InputArea-prompt').textContent.trim(), outputs};
  });
  const bars = Array.from(panel.querySelectorAll('progress')).map(el => ({
      value: Number(el.getAttribute('value')), max: Number(el.getAttribute('max')),
      interrupted: el.classList.contains('progress-bar-interrupted')}));
  const dialogs = Array.from(document.querySelectorAll('.jp-Dialog')).map(d => d.innerText.slice(0, 300));
  const scroller = panel.querySelector('.jp-WindowedPanel-outer');
  return {cells, bars, seen: window.__progress || [], dialogs, height: scroller ? scroller.scrollHeight : 0};
}"""

ERROR_LINE = re.compile(r"Traceback \(most recent call last\)|^\s*\w*(Error|Exception|Interrupt)\b.*$", re.M)
FIGURE_AS_TEXT = re.compile(r"^<Figure size [\d.]+x[\d.]+ with \d+ Axes>$", re.M)


def problems_in(report, nb, expect):
    """Everything a reader would see wrong, as readable lines (empty when the notebook is fine).

    A progress bar completes when none is left short of its end or marked interrupted: a bar with
    leave=True stays at 100%, a master bar replaces itself with its log (so its final 100% frame may
    never reach the DOM; we only ask that it was seen moving)."""
    found = [f"a dialog is open: {text!r}" for text in report["dialogs"]]
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if len(code_cells) != len(report["cells"]):
        found.append(f"the page shows {len(report['cells'])} code cells, the notebook has {len(code_cells)}")
    cell_numbers = [i + 1 for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    images = 0
    for number, cell, shown in zip(cell_numbers, code_cells, report["cells"]):
        where = f"cell {number} ({first_line(cell)!r})"
        if source(cell).strip() and not re.fullmatch(r"\[\d+\]:", shown["prompt"]):
            found.append(f"{where} has no execution count: {shown['prompt']!r}")
        for out in shown["outputs"]:
            if out["mime"] == "application/vnd.jupyter.stderr" and ERROR_LINE.search(out["text"]):
                found.append(f"{where} shows an error:\n{out['text'][-1200:]}")
            if FIGURE_AS_TEXT.search(out["text"]):
                found.append(f"{where} shows a figure as text, not as an image: {out['text'][:80]!r}")
            for img in out["images"]:
                if img["complete"] and img["width"] > 0: images += 1
                else: found.append(f"{where} has an <img> that did not decode")
    if images < expect.images:
        found.append(f"{images} rendered plot(s) (<img>), expected at least {expect.images}")
    if expect.progress:
        if not report["seen"]: found.append("no fastprogress <progress> bar was rendered")
        elif not any(b["value"] > 0 for b in report["seen"]):
            found.append(f"the progress bar never moved: {report['seen'][-3:]}")
    for bar in report["seen"]:
        if bar["interrupted"]: found.append(f"a progress bar was interrupted: {bar}")
    for bar in report["bars"]:
        if bar["value"] < bar["max"]: found.append(f"a progress bar stopped short of its end: {bar}")
    return found


# ---- driving JupyterLab -------------------------------------------------------------------------

def wait_for_kernel(server, relpath, timeout):
    "Until the notebook's session has a started, idle kernel (the page says 'idle' before it has one)."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = [s for s in server.api("/api/sessions") if s.get("path") == relpath]
        if sessions and sessions[0].get("kernel", {}).get("execution_state") == "idle": return
        time.sleep(0.5)
    raise AssertionError(f"no idle kernel for {relpath} after {timeout}s: {server.api('/api/sessions')}")


def run_all_cells(page):
    "Click into the notebook, then Run ▸ Run All Cells once the menu offers it (greyed out until current)."
    page.click(f"{NOTEBOOK} .jp-Cell .jp-InputPrompt")
    item = ".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel:text-is('Run All Cells')"
    for _ in range(20):
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        try:
            page.click(item, timeout=2_000)
            return
        except Exception:
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)
    raise AssertionError("Run ▸ Run All Cells stayed disabled")


def shut_down_kernels(server):
    "Close every session and kernel, so the next notebook starts fresh and nothing keeps running."
    for session in server.api("/api/sessions") or []:
        server.api(f"/api/sessions/{session['id']}", method="DELETE")
    for kernel in server.api("/api/kernels") or []:
        server.api(f"/api/kernels/{kernel['id']}", method="DELETE")


def run_in_lab(browser, server, relpath, expect):
    "Open a notebook as a reader would, Run ▸ Run All Cells, wait for the kernel to be idle; the page report."
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    timings = {}
    try:
        start = time.monotonic()
        # ?reset: a fresh workspace, so notebooks opened by earlier tests do not reopen (and start kernels)
        page.goto(f"{server.base_url}/lab/tree/{relpath}?reset&token={server.token}")
        wait_for_kernel(server, relpath, timeout=90)
        idle = f"{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status='idle']"
        page.wait_for_selector(idle, timeout=30_000)
        page.evaluate(WATCH_PROGRESS)
        timings["open_s"] = time.monotonic() - start
        start = time.monotonic()
        run_all_cells(page)
        # Run All marks the cells [*] at once; done when no cell waits and the kernel reports idle.
        page.wait_for_function(f"""() => {{ const s = ({RUN_STATE})({json.dumps(NOTEBOOK)});
            return s && s.prompts.some(p => p !== '[ ]:' && p !== ''); }}""", timeout=30_000)
        page.wait_for_function(f"""() => {{ const s = ({RUN_STATE})({json.dumps(NOTEBOOK)});
            return s && s.status === 'idle' && !s.prompts.includes('[*]:'); }}""",
                               timeout=expect.timeout * 1000, polling=500)
        while any(k["execution_state"] != "idle" for k in server.api("/api/kernels")): time.sleep(0.5)
        timings["run_s"] = time.monotonic() - start
        page.wait_for_timeout(500)  # let the last display updates render
        report = page.evaluate(REPORT, NOTEBOOK)
        screenshot(page, report, relpath)
        return report, timings
    except Exception:
        screenshot(page, None, relpath)
        raise
    finally:
        page.close()
        shut_down_kernels(server)


def screenshot(page, report, relpath):
    "The whole notebook in one image: the left sidebar closed, the window as tall as the notebook."
    try:
        page.keyboard.press("Escape")
        page.keyboard.press("Control+b")  # toggle the left sidebar (closed: more room for the notebook)
        if report and report["height"]:
            page.set_viewport_size({"width": 1280, "height": min(int(report["height"]) + 200, 16_000)})
            page.wait_for_timeout(300)
            scroller = f"document.querySelector({json.dumps(NOTEBOOK)} + ' .jp-WindowedPanel-outer')"
            page.evaluate(f"() => {scroller}.scrollTop = 0")
            page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / f"{Path(relpath).stem}.png"))
    except Exception as e:  # a screenshot must never hide the real failure
        print(f"screenshot of {relpath} failed: {e}")


def record_timing(name, timings, outcome):
    with open(ARTIFACTS / "timings.tsv", "a") as f:
        open_s, run_s = timings.get("open_s", float("nan")), timings.get("run_s", float("nan"))
        f.write(f"{name}\t{open_s:.1f}\t{run_s:.1f}\t{outcome}\n")


# ---- the tests ----------------------------------------------------------------------------------

def notebook_params():
    "One test per notebook; the ones not run say why (decided at collection, so no server starts for them)."
    for name in all_names():
        reason = None
        if not (NBS / f"{name}.ipynb").exists():
            reason = f"nbs/{name}.ipynb does not exist yet (listed in DEFAULT_NOTEBOOKS or BROWSER_NOTEBOOKS)"
        elif name not in selected_notebooks():
            reason = f"{name} is not in the default browser subset; BROWSER_NOTEBOOKS=all (or ={name}) runs"
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        if name in EXPECTATIONS and EXPECTATIONS[name].known_issue:
            marks.append(pytest.mark.xfail(reason=EXPECTATIONS[name].known_issue, strict=False))
        yield pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", list(notebook_params()))
def test_notebook_runs_in_jupyterlab(name, browser, lab_server):
    nb = read_notebook(lab_server.root / "nbs" / f"{name}.ipynb")
    expect = EXPECTATIONS.get(name) or expect_from_source(nb)
    report, timings = run_in_lab(browser, lab_server, f"nbs/{name}.ipynb", expect)
    problems = problems_in(report, nb, expect)
    record_timing(name, timings, "failed" if problems else "passed")
    print(f"{name}: opened in {timings['open_s']:.1f}s, ran in {timings['run_s']:.1f}s")
    assert not problems, f"{name} in JupyterLab:\n- " + "\n- ".join(problems)


BROKEN = [
    "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\nplt.figure()",
    "raise ValueError('the reader sees this')",
    "print('never runs')",
]


def synthetic_notebook(sources):
    "A clean notebook of code cells, with the project's python3 kernelspec."
    cells = [{"cell_type": "code", "source": src, "metadata": {}, "outputs": [], "execution_count": None,
              "id": f"c{i}"} for i, src in enumerate(sources)]
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                        "name": "python3"}}}


def test_checks_catch_a_broken_notebook(browser, lab_server):
    "The checks can fail: an exception, a figure shown as text, and cells that never ran are all reported."
    nb = synthetic_notebook(BROKEN)
    (lab_server.root / "nbs" / "_broken.ipynb").write_text(json.dumps(nb))
    report, _ = run_in_lab(browser, lab_server, "nbs/_broken.ipynb", Expect(images=1, progress=True))
    problems = "\n".join(problems_in(report, nb, Expect(images=1, progress=True)))
    shown = r"cell 2 \(.raise ValueError.*\) shows an error:\n.*ValueError: the reader sees this"
    assert re.search(shown, problems, re.S), problems
    assert re.search(r"cell 1 \(.import matplotlib.\) shows a figure as text", problems), problems
    assert re.search(r"cell 3 \(.print\('never runs'\).\) has no execution count", problems), problems
    assert "0 rendered plot(s)" in problems and "no fastprogress <progress> bar" in problems, problems


GOOD = [
    "import time\nfrom fastprogress.fastprogress import master_bar, progress_bar",
    "mb = master_bar(range(2))\nfor epoch in mb:\n"
    "    for i in progress_bar(range(4), parent=mb): time.sleep(0.05)\n    mb.write(f'epoch {epoch} done')",
    "import matplotlib.pyplot as plt\nplt.figure(figsize=(2, 2)); plt.plot([3, 1, 2]);",
]


def test_checks_pass_a_good_notebook_with_a_progress_bar(browser, lab_server):
    "A fastprogress master bar (replaced by its log when done) is seen, complete, and a plot is an <img>."
    nb = synthetic_notebook(GOOD)
    (lab_server.root / "nbs" / "_good.ipynb").write_text(json.dumps(nb))
    expect = Expect(images=1, progress=True)
    report, _ = run_in_lab(browser, lab_server, "nbs/_good.ipynb", expect)
    assert problems_in(report, nb, expect) == []
    assert {bar["max"] for bar in report["seen"]} == {2, 4}, report["seen"]  # epochs, batches
    assert not report["bars"], "the master bar should have given way to its log"


def test_server_is_local_and_needs_its_token(lab_server):
    "The server listens on 127.0.0.1 only and answers nothing without the token."
    import urllib.error
    import urllib.request

    import psutil
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{lab_server.base_url}/api/contents", timeout=10)
    assert refused.value.code == 403
    listening = [c.laddr for c in psutil.Process(lab_server.process.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert lab_server.api("/api/contents/nbs")["type"] == "directory"
