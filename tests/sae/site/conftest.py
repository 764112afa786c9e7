"""Fixtures of the feature-browser tests: tiny extraction outputs and a real headless Chromium.

Chromium is Debian's ``chromium`` package (``make test`` installs it where apt can), driven by
Playwright with ``executable_path`` (no browser download). Without it the browser tests skip,
saying so. Screenshots go to ``$HVRT_TEST_ARTIFACTS`` when set, else to pytest's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/sae helpers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make test installs it with apt-get where it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 900})
    ctx.set_default_timeout(60_000)  # a loaded CI machine; nothing here is timed
    pg = ctx.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    ctx.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    d = os.environ.get("HVRT_TEST_ARTIFACTS")
    if d:
        os.makedirs(d, exist_ok=True)
        return d
    return str(tmp_path_factory.mktemp("site-artifacts"))
