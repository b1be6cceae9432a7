#!/usr/bin/env python
"""Build the course website into static HTML: the lessons with their shipped outputs, a landing page
with the README's tour, and API pages from `exp/`'s docstrings.

    python docs/build.py [--out _site]        # then: python -m http.server -d _site 8000

Sphinx reads only files inside its source folder, so the build stages `docs/` and the notebooks of
`nbs/` in a temporary folder and runs Sphinx there. Notebooks are rendered, never executed, and
every warning (a broken link or cross-reference, a docstring that does not parse) fails the build.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def stage(folder, notebooks):
    "Copy the site's sources into `folder`: docs' pages and conf.py, and the lessons as `nbs/`."
    for path in DOCS.iterdir():
        if path.suffix in (".md", ".py") and path.name != "build.py":
            shutil.copy2(path, folder / path.name)
    (folder / "nbs").mkdir()
    for notebook in sorted(Path(notebooks).glob("[0-9]*.ipynb")):
        shutil.copy2(notebook, folder / "nbs" / notebook.name)


def build(out, notebooks=ROOT / "nbs"):
    "Build the site into `out`; the exit status of Sphinx (0: built without a single warning)."
    from sphinx.cmd.build import build_main
    os.environ["FOUNDATIONS_ROOT"] = str(ROOT)  # conf.py reads the README and imports `exp` from here
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "site"
        source.mkdir()
        stage(source, notebooks)
        return build_main(["-W", "--keep-going", "-q", "-b", "html", "-d", str(Path(tmp) / "doctrees"),
                           str(source), str(out)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "_site"), help="folder for the HTML (default: _site)")
    parser.add_argument("--nbs", default=str(ROOT / "nbs"), help="folder of the lessons (default: nbs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    status = build(Path(args.out).resolve(), Path(args.nbs))
    seconds = time.perf_counter() - start
    if status:
        print(f"site build failed after {seconds:.0f} s (the warnings above say where)", file=sys.stderr)
    else:
        print(f"site built in {seconds:.0f} s: {args.out} (view: python -m http.server -d {args.out} 8000)")
    return status


if __name__ == "__main__":
    sys.exit(main())
