"""The dashboard (/ui) in a real headless browser: Debian's chromium (make system-deps) driven by
Playwright, never `playwright install`. The gateway (in-process, in-memory ledger, see
tests/unit/test_gateway_ui.py) is served by uvicorn on loopback. The page must load with no
console error, log in through `?key=` (then by the cookie alone), show the ledger's numbers, and
a screenshot is written under the test's tmp dir (its path printed)."""
from __future__ import annotations

import os

import pytest

from testkit.asgi_server import serve_asgi
from tests.unit.test_gateway_ui import ADMIN, build_gateway

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def served():
    with serve_asgi(build_gateway()) as base:
        yield base


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="chromium not installed (make system-deps)")
def test_dashboard_in_headless_chromium(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1600})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            resp = page.goto(f"{served}/ui?key={ADMIN}")
            assert resp is not None and resp.status == 200
            page.wait_for_load_state("load")
            assert page.title() == "Thawline gateway"
            assert page.locator('[data-metric="cost_usd"] b').inner_text() == "$3.8750"
            text = page.locator("body").inner_text()
            assert "$3.7500" in text and "$0.1250" in text and "key:alice" in text and "25%" in text
            assert "replica-7" in text and "total 5.00 s" in text
            assert page.locator("svg.chart").count() == 4 and page.locator("svg.waterfall").count() == 1
            box = page.locator("svg.waterfall").bounding_box()
            assert box is not None and box["width"] > 100
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\ndashboard screenshot: {shot}")
            assert shot.stat().st_size > 10_000
            # the cookie set by ?key= logs the next visit in without a key
            again = page.goto(f"{served}/ui")
            assert again is not None and again.status == 200
            assert all(u.startswith(served) for u in requests), requests
        finally:
            browser.close()
    assert errors == []
