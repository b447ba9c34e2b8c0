"""Headless Chromium for the page tests: Playwright driving the system's /usr/bin/chromium."""

from pathlib import Path

import pytest

from tests.support.processes import ROOT

CHROMIUM = Path("/usr/bin/chromium")
# Screenshots go here (git-ignored).
ARTIFACTS = ROOT / "test-artifacts"

_CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module; ARTIFACTS exists for the module's screenshots."""
    # Imported here: collecting the other e2e modules does not need Playwright.
    from playwright.sync_api import sync_playwright

    # Never a skip: `make test` installs it (devtools/ensure-tools.sh).
    assert CHROMIUM.exists(), (
        f"no Chromium at {CHROMIUM}: run make test, or apt-get install chromium"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=_CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
