"""The web room's fixtures: headless Chromium through selenium, and a collector with [web] on.

One browser and one collector per module (they take seconds to start); every test waits on live
state with short polls, never a fixed sleep. Without Debian's `chromium` + `chromium-driver` or
the `selenium` package the browser tests skip and say which is missing (`make system-deps`
installs the first two as root, `make venv` the third).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from collector_procs import CollectorProc, free_port

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "web-screenshots"


def web_collector(root: Path, pki, plaintext: bool = True, web: str = "", store: str = "") -> CollectorProc:
    """A collector (not started) with the web UI on a free loopback port (`.web_port`); `web`
    and `store`: more lines for those sections."""
    port = free_port()
    col = CollectorProc(root, pki, plaintext,
                        extra=f'[store]\nrollup_flush = "1s"\n{store}[web]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
                              f'stale_after = "5s"\n{web}')
    col.web_port = port
    return col


@pytest.fixture(scope="session")
def web_collector_factory():
    """`web_collector` for the modules (conftest is not importable under --import-mode=importlib)."""
    return web_collector


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install '.[test]')")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless Chromium needs Debian's chromium and chromium-driver (`make system-deps` as root)")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    b = webdriver.Chrome(options=options, service=Service(driver))
    b.set_page_load_timeout(30)
    yield b
    b.quit()
