"""The course website as a reader sees it: built by `python docs/build.py`, served by `python -m http.server`
on loopback, and opened in headless Chromium.

Every lesson page must be reachable from the site's navigation, render its math (MathJax has turned each
formula into typeset output: no raw `$$` or `\\(` left in the text), show each plot the notebook carries as a
decoded image, and show its code cells highlighted. One screenshot per page goes to test-artifacts/site/.
"""
import functools
import http.server
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
LESSONS = sorted(p for p in (ROOT / "nbs").glob("[0-9]*.ipynb"))
ARTIFACTS = ROOT / "test-artifacts" / "site"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site, built from this checkout into a temporary folder, exactly as the README's command does."
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "site built in" in result.stdout
    return out


@pytest.fixture(scope="module")
def server(site):
    "`python -m http.server` on a free loopback port, serving the built site."
    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def optional(url):
    "Requests whose failure shows nothing wrong: the browser's icon and MathJax 2's probe for its TeX fonts."
    # MathJax asks for a TeX font for \mathcal even when set to STIX-Web, then draws the glyph with STIX-Web.
    return url.endswith("favicon.ico") or "/_static/fonts/HTML-CSS/TeX/" in url


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope="module")
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    missing = []
    page.on("response", lambda r: r.status >= 400 and not optional(r.url) and missing.append(r.url))
    page.missing = missing
    yield page
    context.close()


def notebook_facts(path):
    "What the page must show: code cells, image outputs, and whether the markdown has math."
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    images = sum(1 for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    has_math = bool(re.search(r"\$[^$\s][^$]*\$", re.sub(r"`[^`]*`", "", markdown)))
    return len(code), images, has_math


def wait_for_mathjax(page):
    "Until MathJax 2 has typeset everything it queued (or the page has no MathJax at all)."
    page.wait_for_function("() => !window.MathJax || (MathJax.Hub && MathJax.isReady"
                           " && MathJax.Hub.queue.pending === 0 && MathJax.Hub.queue.running === 0)",
                           timeout=60_000)


def test_every_lesson_is_reachable_from_the_navigation(page, server):
    page.goto(server, wait_until="load")
    links = page.eval_on_selector_all("nav a[href]", "links => links.map(a => a.getAttribute('href'))")
    lessons = {p.stem for p in LESSONS}
    urls = [urljoin(server, href) for href in links]
    linked = {Path(urlparse(url).path).stem for url in urls if "/nbs/" in url}
    assert lessons <= linked, f"not in the navigation: {sorted(lessons - linked)}"
    tour = page.eval_on_selector_all("table a[href]", "links => links.map(a => a.getAttribute('href'))")
    toured = {Path(href).stem for href in tour if href.startswith("nbs/")}
    assert lessons <= toured, f"the tour does not link {sorted(lessons - toured)}"
    api = page.locator("nav a", has_text="API reference")
    assert api.count() == 1, "no API reference in the navigation"


@pytest.mark.parametrize("notebook", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_page_renders_math_images_and_highlighted_code(page, server, notebook):
    code_cells, images, has_math = notebook_facts(notebook)
    page.missing.clear()
    page.goto(urljoin(server, f"nbs/{notebook.stem}.html"), wait_until="load")
    wait_for_mathjax(page)
    # the prose only: code and its outputs may hold `\\(` or `$$` (a regex, a shell line) that is not math
    prose = ("a => { const c = a.cloneNode(true); "
             "c.querySelectorAll('div.cell_input, div.cell_output, pre, code').forEach(e => e.remove()); "
             "return c.innerText; }")
    text = page.eval_on_selector("article", prose)
    assert "$$" not in text and "\\(" not in text and "\\[" not in text.replace("\\[i", ""), "raw math left"
    if has_math:
        assert page.locator("article .MathJax, article .MathJax_Display").count() > 0, "no typeset math"
    cells = page.locator("article div.cell_input div.highlight")
    assert cells.count() == code_cells, f"{cells.count()} code cells highlighted, of {code_cells}"
    tokens = "article div.cell_input div.highlight span.k, article div.cell_input div.highlight span.n"
    assert page.locator(tokens).count() > 0, "code is not highlighted"
    shown = page.eval_on_selector_all("article div.cell_output img",
                                      "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
    assert len(shown) == images and all(shown), f"{sum(shown)} of {images} plots shown ({len(shown)} <img>)"
    assert not page.missing, f"the page asked for files the site lacks: {page.missing}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{notebook.stem}.png"))


def test_api_reference_has_a_page_per_module(page, server, site):
    modules = sorted(p.stem for p in (ROOT / "exp").glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if not (site / "_api" / f"exp.{m}.html").exists()]
    assert not missing, f"no API page for {missing}"
    page.goto(urljoin(server, "_api/exp.learner.html"), wait_until="load")
    assert "Learner" in page.locator("article").inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "api_exp.learner.png"))
