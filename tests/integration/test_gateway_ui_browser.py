"""The dashboard (/ui) in a real headless browser: Debian's chromium (make system-deps) driven by
Playwright, never `playwright install`. The gateway (in-process, in-memory ledger, see
tests/unit/test_gateway_ui.py) is served by uvicorn on loopback. The page must load with no
console error, log in through `?key=` (then by the cookie alone), show the ledger's numbers, and
a screenshot is written under the test's tmp dir (its path printed). Also: a phone-width viewport
without sideways scrolling, and two Serve replicas whose requests the page counts in full."""
from __future__ import annotations

import os

import pytest

from testkit.asgi_server import serve_asgi
from tests.conftest import free_port
from tests.integration.conftest_gateway import (_sha, fake_providers, own_gateway,  # noqa: F401
                                                ray_gateway_session, unique)
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


def _no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="chromium not installed (make system-deps)")
def test_dashboard_fits_a_narrow_screen(served, tmp_path):
    """A phone-width viewport: the page never scrolls sideways (charts scale down, wide tables
    scroll inside their own box), and the charts stay drawn."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 360, "height": 740})
            resp = page.goto(f"{served}/ui?key={ADMIN}&refresh=0")
            assert resp is not None and resp.status == 200
            page.wait_for_load_state("load")
            assert _no_horizontal_overflow(page), page.evaluate("document.scrollingElement.scrollWidth")
            for sel in ("svg.chart", "svg.waterfall"):
                box = page.locator(sel).first.bounding_box()
                assert box is not None and 100 < box["width"] <= 360 and box["height"] > 20
            shot = tmp_path / "dashboard-narrow.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nnarrow dashboard screenshot: {shot}")
            assert shot.stat().st_size > 5_000
        finally:
            browser.close()


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="chromium not installed (make system-deps)")
def test_two_replica_dashboard_counts_every_request(tmp_path, fake_providers, ray_gateway_session):
    """Two gateway replicas behind Serve: requests land on both, and the page (served by either)
    counts all of them, in the cards and in the recent-request log."""
    import httpx
    from ray._private.test_utils import wait_for_condition

    sync_api = pytest.importorskip("playwright.sync_api")
    admin, client = "tl-ui2-admin", "tl-ui2-client"
    cfg = {"providers": {"oa": {"type": "openai_compatible", "base_url": fake_providers.openai_url,
                                "api_key_env": "THAWLINE_TEST_OPENAI_KEY",
                                "prices": {"gpt-fake": {"input_per_1m": 1.0, "output_per_1m": 2.0}}}},
           "routes": {"ui2": {"targets": [{"provider": "oa", "model": "gpt-fake", "timeout_s": 10}]}},
           "keys": [{"id": "ui2", "sha256": _sha(client)}],
           "server": {"admin_key_env": None, "admin_key_sha256": _sha(admin)},
           "ledger": {"url": (tmp_path / "ledger").as_uri(), "flush_interval_s": 60}}
    with own_gateway(cfg, unique("gw-ui2"), replicas=2) as base:
        seen: dict[str, int] = {}
        # a fresh connection per request lets the proxy pick either replica; go on until both
        # answered and at least 10 were sent (bounded)
        while (len(seen) < 2 or sum(seen.values()) < 10) and sum(seen.values()) < 200:
            r = httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {client}"},
                           json={"model": "ui2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                           timeout=30)
            assert r.status_code == 200, r.text
            rid = r.headers["x-thawline-replica"]
            seen[rid] = seen.get(rid, 0) + 1
        assert len(seen) == 2, seen
        sent = sum(seen.values())
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 1600})

                def cards_count_all() -> bool:
                    page.goto(f"{base}/ui?key={admin}&refresh=0")
                    return page.locator('[data-metric="requests"] b').inner_text() == str(sent)

                wait_for_condition(cards_count_all, timeout=30, retry_interval_ms=500)
                assert page.locator('[data-metric="ok"] b').inner_text() == str(sent)
                assert "summed over 2 replica process(es)" in page.locator("body").inner_text()
                assert page.locator('[data-section="recent"] tr').count() == sent + 1      # + header row
                assert "hi" not in page.locator('[data-section="recent"]').inner_text().split()
                page.screenshot(path=str(tmp_path / "dashboard-2-replicas.png"), full_page=True)
            finally:
                browser.close()
