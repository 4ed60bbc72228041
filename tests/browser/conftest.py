"""Browser tests: Debian's chromium driven by playwright (never a downloaded browser build).

Every test here is marked ``browser`` and skipped when /usr/bin/chromium is missing (``make test`` installs it).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# No background networking: this machine's closed network refuses Chromium's update and sync connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    missing = pytest.mark.skip(reason="Debian's chromium is not installed")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)
            if not Path(CHROMIUM).exists():
                item.add_marker(missing)


@pytest.fixture
def browser(monkeypatch):
    """A headless Chromium. Playwright's sync API runs an event loop in the test's thread, hence the async-unsafe
    allowance for the ORM calls the tests make between page actions."""
    from playwright.sync_api import expect, sync_playwright

    # expect() has its own 5 s default, not the page's timeout: too short for a redraw on a loaded CI machine.
    expect.set_options(timeout=20_000)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def screenshot():
    """``screenshot(page, "name.png")`` writes docs/images/name.png when LOOPLINE_SCREENSHOTS=1 (to refresh the docs)."""
    images = HERE.parents[1] / "docs" / "images"

    def take(page, name: str, *, full_page: bool = True) -> None:
        if os.environ.get("LOOPLINE_SCREENSHOTS") == "1":
            images.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(images / name), full_page=full_page)

    return take


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on (for a demo inbox or another helper server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
