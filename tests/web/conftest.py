"""Headless Chromium for the page's tests: the system browser, driven by Playwright.

Never `playwright install`: the browser is Debian's `chromium` (`.ci/run` installs it). Without
it the tests skip on a laptop, and fail in CI (CI or LTP_REQUIRE_BROWSER set), where a skip
would hide a broken page.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("LTP_CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("LTP_ARTIFACTS_DIR") or Path(__file__).resolve().parents[2] / "tmp" / "artifacts"
)


def _browser_required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("LTP_REQUIRE_BROWSER"))


def _unavailable(reason: str) -> None:
    if _browser_required():
        pytest.fail(f"{reason} (required in CI: .ci/run installs chromium with apt)")
    pytest.skip(f"{reason}; install it with `apt-get install -y chromium` to run browser tests")


# Module scope, not session: while Playwright's sync API is active its event loop counts as
# running on the main thread, which would break every asyncio test that runs after it.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (dev extra)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
