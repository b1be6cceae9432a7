"""Sphinx configuration of the course website. Build it with `python docs/build.py`, which stages these
pages and the notebooks together (Sphinx reads only its own source folder) and fails on any warning.

Notebooks are rendered, never executed (`nb_execution_mode = "off"`).
"""
import os
import re
import sys
from pathlib import Path

import jupyter_server_mathjax

ROOT = Path(os.environ.get("FOUNDATIONS_ROOT", Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(ROOT))  # autodoc imports `exp` from this checkout

project = "foundations"
author = "foundations contributors"
copyright = "2026 onwards, foundations contributors"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.mathjax"]
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_execution_mode = "off"
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]

# MathJax from a PyPI package (jupyter_server_mathjax), copied into the site, so formulas render with no
# network (offline readers, the browser tests) instead of depending on a CDN.

html_static_path = [str(Path(jupyter_server_mathjax.__file__).parent / "static")]
mathjax_path = "MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
# MyST's default marks every section "tex2jax_ignore" and lets MathJax 3 in by class; MathJax 2 would then
# skip the whole page, so MyST leaves the classes alone here.
myst_update_mathjax = False
mathjax2_config = {"tex2jax": {"processEscapes": True}, "messageStyle": "none",
                   # the package carries the STIX-Web fonts only (as Jupyter's own pages use them), and
                   # the quick preview would ask for TeX fonts that it lacks
                   "HTML-CSS": {"availableFonts": [], "preferredFont": None, "imageFont": None,
                                "webFont": "STIX-Web"},
                   "fast-preview": {"disabled": True}, "CHTML-preview": {"disabled": True}}

html_theme = "sphinx_book_theme"
html_title = "foundations: deep learning from the foundations"
html_theme_options = {"show_navbar_depth": 1, "home_page_in_toc": True}

# Docstrings are written in the course's markdown habit: `name` means code, not RST's title reference.
default_role = "code"
autosummary_generate = True
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"


def tour_table(staged):
    "The README's tour table, each notebook name a link to its lesson page (among the `staged` ones)."
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = re.search(r"^## A tour\n\s*((?:\|.*\|\n)+)", readme, flags=re.M)
    if tour is None:
        raise RuntimeError("README.md needs a '## A tour' section that starts with a table: "
                           "the landing page shows it")

    def link(match):
        name = match.group(1)
        if not (ROOT / "nbs" / f"{name}.ipynb").exists():
            raise RuntimeError(f"README's tour names {name}, but nbs/{name}.ipynb does not exist")
        return f"[`{name}`](nbs/{name}.ipynb)" if (staged / f"{name}.ipynb").exists() else match.group(0)
    return re.sub(r"`(\d\d[a-z]?_\w+)`", link, tour.group(1))


def code_spans_as_rst(app, what, name, obj, options, lines):
    "Docstrings use markdown's `code`; RST wants ``code``, escaped where a letter touches it (`Generator`s)."
    def literal(match):
        before = "\\ " if match.group(1) else ""
        after = "\\ " if match.group(3) else ""
        return f"{match.group(1)}{before}``{match.group(2)}``{after}{match.group(3)}"
    for i, line in enumerate(lines):
        lines[i] = re.sub(r"(\w?)`([^`]+)`(\w?)", literal, line)


def insert_tour(app, docname, source):
    if docname == "index":
        source[0] = source[0].replace("<!-- tour -->", tour_table(Path(app.srcdir) / "nbs"))


def setup(app):
    app.connect("source-read", insert_tour)
    app.connect("autodoc-process-docstring", code_spans_as_rst)
