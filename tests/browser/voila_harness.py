"""Serve an app notebook with Voila on localhost and open it in headless Debian Chromium (Playwright).

Shared by ``test_widgets_browser.py`` and ``screenshots.py``. Every missing tool is an error naming it:
the browser tests fail loudly rather than skip.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

APPS = Path(__file__).resolve().parent
PROJECT = APPS.parents[1]
CHROMIUM = Path(os.environ.get("FEWSAM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
)
# Voila's lab template links Font Awesome from a CDN although voila.js bundles it; nothing else may leave localhost.
TOLERATED_EXTERNAL = ("https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@",)


def require_browser_tools() -> None:
    """Raise naming what is missing: Debian chromium, voila, playwright."""
    problems = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        problems.append(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    for module in ("voila", "playwright"):
        try:
            __import__(module)
        except ImportError:
            problems.append(f"python package {module!r} is missing: pip install -e '.[test]'")
    if problems:
        raise RuntimeError("the browser tests cannot run: " + "; ".join(problems))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kernel_environment(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for Voila and its kernel: temporary HOME, CPU JAX, no user Jupyter config."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
        "IPYTHONDIR": str(home / "ipython"),
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(home / "matplotlib"),
        "JAX_PLATFORMS": "cpu",
        "FEWSAM_HOME": os.environ.get("FEWSAM_HOME", str(home / "fewsam")),
        "PYTHONPATH": str(PROJECT),
    }
    env.update(extra or {})
    return env


@contextlib.contextmanager
def voila_server(log_path: Path, env: dict[str, str] | None = None, startup_timeout: float = 60.0) -> Iterator[str]:
    """Serve the app notebooks of this folder with Voila on a free localhost port; yields the base URL
    (an app is at ``app_url(base, name)``); stops the server on exit."""
    require_browser_tools()
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fewsam-voila-home-") as home, open(log_path, "w") as log:
        command = [
            sys.executable, "-m", "voila", str(APPS), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
            "--VoilaConfiguration.show_tracebacks=True", "--VoilaExecutor.timeout=300",
        ]
        server = subprocess.Popen(command, cwd=APPS, env=kernel_environment(Path(home), env),
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"voila exited with code {server.returncode}:\n{log_tail(log_path)}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"voila did not listen on port {port} in {startup_timeout:.0f} s:\n"
                                       f"{log_tail(log_path)}")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/"
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def app_url(base: str, notebook: str) -> str:
    if not (APPS / notebook).is_file():
        raise FileNotFoundError(f"app notebook {APPS / notebook} does not exist")
    return f"{base}voila/render/{notebook}"


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


@dataclass
class PageProblems:
    """What the page reported: console errors, uncaught exceptions, requests that tried to leave localhost."""

    console_errors: list[tuple[str, str]] = field(default_factory=list)  # (text, source URL)
    page_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)

    def unexpected(self) -> list[str]:
        """Everything except the tolerated CDN stylesheet and the console error its blocked load causes."""
        external = [url for url in self.external_requests if not url.startswith(TOLERATED_EXTERNAL)]
        console = [f"{text} ({source})" for text, source in self.console_errors
                   if not source.startswith(TOLERATED_EXTERNAL)]
        return [*(f"console: {t}" for t in console), *(f"page error: {t}" for t in self.page_errors),
                *(f"external request: {u}" for u in external)]


@contextlib.contextmanager
def chromium_page(width: int = 1200, height: int = 800, scale: float = 1.0):
    """Headless Debian Chromium; yields (page, PageProblems). Requests off localhost are aborted and recorded."""
    require_browser_tools()
    from playwright.sync_api import sync_playwright

    problems = PageProblems()

    def route(route_request):
        url = route_request.request.url
        if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
            route_request.continue_()
        else:
            problems.external_requests.append(url)
            route_request.abort()

    def on_console(message):
        if message.type == "error":
            problems.console_errors.append((message.text, message.location.get("url", "")))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_FLAGS))
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=scale)
            page.route("**/*", route)
            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.page_errors.append(str(error)))
            yield page, problems
        finally:
            browser.close()


def artifacts_dir() -> Path:
    """``$FEWSAM_ARTIFACTS`` or ``test-artifacts/browser`` (git-ignored), created."""
    folder = Path(os.environ.get("FEWSAM_ARTIFACTS", PROJECT / "test-artifacts" / "browser"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder

