"""The package's structure: no import cycle, every public name defined where it is listed, nbdev's exporter
and ours agree, and the lint floor of ruff.toml holds for the package, the tools, tests and benchmarks."""
import ast
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "exp").glob("*.py") if p.stem != "__init__")


def imported_modules(path):
    "The `exp` modules a module imports (`from .x import y`, also inside functions)."
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module: found.add(node.module.split(".")[0])
            else: found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("exp."):
            found.add(node.module.split(".")[1])
    return found


def find_cycle(graph):
    "One import cycle as a list of modules, or None."
    state, stack = {}, []
    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open": return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)): return cycle
        state[node] = "done"
        stack.pop()
        return None
    for node in sorted(graph):
        if node not in state and (cycle := visit(node)): return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycle():
    graph = {m: imported_modules(ROOT / "exp" / f"{m}.py") for m in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in exp/: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", MODULES)
def test_every_listed_name_is_defined_in_its_module(module):
    "No re-exports: `__all__` lists what the module defines; users import a name from where it is defined."
    mod = importlib.import_module(f"exp.{module}")
    defined = [(name, getattr(mod, name)) for name in mod.__all__]
    elsewhere = [name for name, obj in defined
                 if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ != mod.__name__]
    assert not elsewhere, f"exp.{module} lists names defined elsewhere: {elsewhere}"


def public_names_of(path):
    "The names in a module's `__all__`, read without importing it."
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return ast.literal_eval(node.value)
    return None


@pytest.mark.slow
def test_nbdev_export_gives_the_same_modules(tmp_path):
    "nbdev 2's own exporter, run on our notebooks, makes the modules of exp/ with the same public names."
    pytest.importorskip("nbdev")
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs", ignore=shutil.ignore_patterns(".*"))
    shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini")
    nbdev_export = Path(sys.executable).with_name("nbdev_export")
    command = [str(nbdev_export)] if nbdev_export.exists() else [sys.executable, "-m", "nbdev.cli",
               "nbdev_export"]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    def modules(lib): return {p.stem: public_names_of(p) for p in lib.glob("[!_]*.py")}
    ours, theirs = modules(ROOT / "exp"), modules(tmp_path / "exp")
    assert sorted(theirs) == sorted(ours), f"modules: nbdev's {sorted(theirs)}, ours {sorted(ours)}"
    differ = {m: (sorted(set(ours[m]) ^ set(theirs[m]))) for m in ours if set(ours[m]) != set(theirs[m])}
    assert not differ, f"public names that only one exporter gives, per module: {differ}"


def test_lint_floor():
    "ruff.toml: line length 110, no semicolon-joined statements, sorted imports, pyflakes."
    pytest.importorskip("ruff")
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, "ruff finds problems (fix exp/ ones in the notebook):\n" + out.stdout[-6000:]


# written in pieces, so that this file does not match itself
ROOTS = ["work", "root", r"home/[a-z]\w*", r"Users/\w+"]
MACHINE_PATH = re.compile(r"(?<![\w.])/(" + "|".join(ROOTS) + r")/|[A-Z]:\\" + "Users")


def test_machine_path_pattern():
    assert MACHINE_PATH.search("see /work" + "/shared/data") and MACHINE_PATH.search("/home/" + "ada/x")
    assert not MACHINE_PATH.search("https://example.org/work/ and $EXP_DATA_HOME/mnist")


def test_no_path_of_a_developers_machine_in_the_project():
    "Docs, code, results and notebook outputs name paths relative to the project, never a machine's."
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked: pytest.skip("not a git checkout")
    found = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".bz2", ".gz", ".pt", ".onnx"} or not path.is_file(): continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line): found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "paths of a developer's machine:\n" + "\n".join(found[:20])


@pytest.mark.slow
def test_nbdev_test_passes_on_every_notebook():
    "nbdev's own notebook runner (execnb, in-process) runs every lesson too, not only our run_notebook.py."
    nbdev_test = Path(sys.executable).with_name("nbdev_test")
    if not nbdev_test.exists(): pytest.skip("nbdev is not installed")
    env = {**os.environ, "EXP_DATASET": "digits"}
    command = [str(nbdev_test), "--path", "nbs", "--n_workers", "2", "--timing"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0 and "Success" in out.stdout + out.stderr, (out.stdout + out.stderr)[-4000:]
