"""Fixtures for the browser tests: a throwaway JupyterLab server and a headless Chromium.

The server listens on 127.0.0.1 only, on a free port, with a random token, and serves a temporary
copy of the project (nbs/, exp/, benchmarks/, notebook2script.py, settings.ini), so running notebooks never
writes into the committed ones. Its config, data, runtime and settings folders are temporary too.
It is shut down when its test module ends, whatever happened: the REST shutdown first, then the
process group, then any kernel that still names our runtime folder.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
# what notebooks read
PROJECT_FILES = ["nbs", "exp", "benchmarks", "notebook2script.py", "run_notebook.py", "settings.ini"]
SERVER_START_TIMEOUT = 90


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: runs notebooks in JupyterLab in headless Chromium "
                                       "(needs /usr/bin/chromium and playwright; select with -m browser)")


def missing_dependency(reason):
    "Skip, or fail when CI requires the browser tests to run (FOUNDATIONS_REQUIRE_BROWSER=1)."
    if os.environ.get("FOUNDATIONS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; FOUNDATIONS_REQUIRE_BROWSER=1 needs it: "
                    "apt-get install -y chromium && pip install playwright (no `playwright install`)",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright; skips (or fails in CI) when either is missing.

    Per module, not per session: Playwright's sync API keeps an asyncio loop running in the main thread
    while it is open, and a session-long one made every later `asyncio.run` in the suite fail."""
    if not CHROMIUM.exists():
        missing_dependency(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_dependency("the playwright Python client is missing (pip install playwright)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_project(root):
    "A temporary copy of what the notebooks read, laid out like the repository."
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")
    for name in PROJECT_FILES:
        src = PROJECT_ROOT / name
        if src.is_dir(): shutil.copytree(src, root / name, ignore=ignore)
        elif src.exists(): shutil.copy2(src, root / name)
    for notebook in (root / "nbs").glob("*.ipynb"):
        clear_outputs(notebook)


def clear_outputs(path):
    "Drop the shipped outputs, so that what the page shows after Run All is what this run produced."
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_lab_settings(config_dir):
    "No announcement/news or update dialogs, and every cell attached to the DOM (no windowing)."
    labconfig = config_dir / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    settings = config_dir / "lab" / "user-settings" / "@jupyterlab"
    for plugin, values in {
        "notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                "checkForUpdates": False},
    }.items():
        path = settings / plugin
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


class LabServer:
    "A running `jupyter lab` and how to reach it."
    def __init__(self, root, port, token, process, log_path, runtime_dir):
        self.root, self.port, self.token, self.process = root, port, token, process
        self.log_path, self.runtime_dir = log_path, runtime_dir
        self.base_url = f"http://127.0.0.1:{port}"

    def api(self, path, method="GET"):
        "JSON from the server's REST API (token in the header, never in a log line)."
        request = urllib.request.Request(f"{self.base_url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, chars=3000):
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-chars:]

    def kernel_processes(self):
        "Our kernels: processes whose command line names our private runtime folder."
        import psutil
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(str(self.runtime_dir) in arg for arg in (proc.info["cmdline"] or [])): found.append(proc)
        return found


def die_with_parent():
    """Linux: SIGTERM the server if pytest itself is killed (no finalizer runs then); the server stops its
    kernels."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_server(root, env, log_path, runtime_dir):
    token, port = secrets.token_hex(24), free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--ServerApp.shutdown_no_activity_timeout=600", "--MappingKernelManager.cull_idle_timeout=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0: cmd.append("--allow-root")  # containers run as root
    log = open(log_path, "ab")
    env = dict(env, JUPYTER_TOKEN=token)  # not on the command line, where `ps` would show it
    process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
    log.close()
    server = LabServer(root, port, token, process, log_path, runtime_dir)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None: return server, f"jupyter lab exited with {process.returncode}"
        try:
            server.api("/api/status")
            return server, None
        except OSError:
            time.sleep(0.5)
    return server, f"jupyter lab did not answer within {SERVER_START_TIMEOUT}s"


def stop_server(server):
    "REST shutdown, then SIGTERM/SIGKILL to the process group, then kill leftover kernels by pid."
    process = server.process
    if process.poll() is None:
        try: server.api("/api/shutdown", method="POST")
        except OSError: pass
        try: process.wait(timeout=15)
        except subprocess.TimeoutExpired: pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None: break
        try: os.killpg(process.pid, sig)
        except ProcessLookupError: break
        try: process.wait(timeout=10)
        except subprocess.TimeoutExpired: pass
    strays = server.kernel_processes()
    for proc in strays:  # kernels run in their own session, so the group kill misses them
        try: proc.kill()
        except Exception: pass
    return strays


@pytest.fixture(scope="module")
def lab_server(browser, tmp_path_factory):
    "One JupyterLab server for the module that uses it, on a temporary copy of the project; always shut down."
    base = tmp_path_factory.mktemp("jupyterlab")
    root, home = base / "project", base / "jupyter"
    root.mkdir()
    copy_project(root)
    dirs = {name: home / name for name in ("config", "data", "runtime", "ipython")}
    for d in dirs.values(): d.mkdir(parents=True)
    write_lab_settings(dirs["config"])
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
               JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), IPYTHONDIR=str(dirs["ipython"]),
               PYTHONPATH=os.pathsep.join(
                   p for p in [str(root), os.environ.get("PYTHONPATH")] if p))
    env.pop("JUPYTER_PATH", None)
    env.pop("MPLBACKEND", None)  # the kernel picks the inline backend itself
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "jupyterlab.log"
    log_path.write_text("")
    (ARTIFACTS / "timings.tsv").write_text("notebook\topen_s\trun_s\toutcome\n")
    server, error = None, None
    for _ in range(3):  # a port taken between free_port() and bind: try another
        server, error = start_server(root, env, log_path, dirs["runtime"])
        if error is None: break
        stop_server(server)
        if "already in use" not in server.log_tail(): break
    try:
        if error: pytest.fail(f"{error}; log:\n{server.log_tail()}", pytrace=False)
        yield server
    finally:
        strays = stop_server(server)
        if strays:
            raise RuntimeError(f"kernels outlived the server and were killed: {[p.pid for p in strays]}")
