"""The dashboard's operator view beyond spend: traffic summed over replicas by the real ledger
actor class (called in-process, as `.remote` would), latency / TTFT percentiles per route, the
recent-request log (no prompt text), cold-start history, auto-refresh, and spend that agrees with
the usage report (idle replica time labelled as `thawline usage` labels it)."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from gateway.costs.activity import percentile, route_latency
from gateway.costs.ledger import Ledger
from gateway.costs.ledger_actor import LedgerActor
from gateway.costs.pricing import PriceBook
from gateway.costs.schema import LedgerRow
from gateway.costs.tracker import CostTracker
from gateway.costs.usage import IDLE_GROUP
from gateway.handle_ingress import call_asgi
from tests.unit.test_gateway_ui import ADMIN, NOW, build_gateway

AUTH = {"authorization": f"Bearer {ADMIN}"}


class InProcess:
    """An actor class's async methods under the `.remote(...)` spelling, called in this process."""

    def __init__(self, obj) -> None:
        self.obj = obj

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self.obj, name))


async def _html(gw, path="/ui") -> str:
    out = await call_asgi(gw, {"method": "GET", "path": path, "headers": AUTH, "body": None})
    assert out["status"] == 200
    body = out["body"]
    return body.decode() if isinstance(body, bytes) else str(body)


def test_percentiles_are_nearest_rank_over_answered_requests():
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    rows = [{"route": "r", "status": "ok", "latency_ms": float(i), "ttft_ms": i / 2} for i in range(1, 101)]
    rows.append({"route": "r", "status": "error", "latency_ms": 99999.0, "ttft_ms": None})
    (got,) = route_latency(rows)
    assert got["requests"] == 101 and got["answered"] == 100
    assert (got["latency_p50_ms"], got["latency_p90_ms"], got["latency_p99_ms"]) == (50.0, 90.0, 99.0)
    assert got["ttft_p50_ms"] == 25.0


async def test_traffic_cards_sum_every_replicas_counters():
    actor = LedgerActor(None, None, flush_interval_s=3600)
    replicas = []
    for i, n in enumerate((3, 7)):       # one replica served 3 requests, the other 7
        t = CostTracker(PriceBook(), actor=InProcess(actor),
                        traffic=lambda n=n: {"requests": n, "ok": n, "errors": 0, "fallbacks": 0, "rejected_429": 1})
        t.process_id = f"replica-{i}"
        replicas.append(t)
    for t in replicas:
        await t.sync()
    got = await replicas[0].activity(since=None)
    assert got["traffic"]["requests"] == 10 and got["traffic"]["rejected_429"] == 2
    assert got["traffic"]["replicas"] == 2
    await replicas[1].sync()              # unchanged counters are not sent again, nor counted twice
    assert (await replicas[1].activity(since=None))["traffic"]["requests"] == 10


async def test_page_shows_latency_recent_requests_history_and_refreshes():
    gw = build_gateway()
    rows = [LedgerRow(key_id="alice", route="chat", target="oa", model="gpt-x", latency_ms=100.0 * i,
                      ttft_ms=10.0 * i, tokens_in=5, tokens_out=i, ts=NOW - timedelta(minutes=10 - i)).to_dict()
            for i in range(1, 6)]
    gw.costs.ledger.append(rows)

    async def history(app):
        return [{"replica": "replica-9", "host": "warm_pool", "first_boot": False,
                 "phases_s": {"engine_prepare": 1.0, "engine_start_with_weights": 2.0, "total": 3.5},
                 "marks": {"request": NOW.timestamp()}}, {"replica": "replica-7", "phases_s": {"total": 5.0}}]

    gw.dashboard.cold_history_lookup = history
    html = await _html(gw)
    assert '<meta http-equiv="refresh" content="15">' in html
    assert "Latency per route" in html and 'data-section="latency"' in html
    latency = re.search(r'data-section="latency">(.*?)</div>', html, flags=re.S).group(1)
    # chat today: latencies 0 (the fixture's row), 100..500 ms; TTFT 10..50 ms (nearest rank)
    chat = re.search(r"<tr><td>chat</td>(.*?)</tr>", latency).group(1)
    assert re.findall(r"<td class=num>([^<]*)</td>", chat) == ["6", "6", "200 ms", "500 ms", "500 ms",
                                                              "30 ms", "50 ms", "50 ms"]
    recent = re.search(r'data-section="recent">(.*?)</div>', html, flags=re.S).group(1)
    times = re.findall(r"<tr><td>(\d\d:\d\d:\d\d)</td>", recent)
    assert len(times) >= 5 and times == sorted(times, reverse=True)          # newest first
    history_html = re.search(r'data-section="cold-starts">(.*?)</div>', html, flags=re.S).group(1)
    assert "replica-9" in history_html and "warm_pool" in history_html and "replica-7" in history_html
    assert '<meta http-equiv="refresh"' not in await _html(gw, "/ui?refresh=0")
    assert 'content="5"' in await _html(gw, "/ui?refresh=1")                # floor: 5 s


async def test_spend_today_and_idle_time_agree_with_the_usage_report():
    gw = build_gateway()
    idle = LedgerRow(key_id="-", route="-", target="local", model="tiny-app", status="idle", attempts=0,
                     cost_usd=0.5, pricing="local", ts=NOW).to_dict()
    gw.costs.ledger.append([idle])
    html = await _html(gw)
    usage = await gw.costs.query(group_by="route", since=None)
    total = sum(r["cost_usd"] for r in usage)
    assert IDLE_GROUP in {r["group"] for r in usage} and f"{IDLE_GROUP}</td>" in html.replace("&#x27;", "'")
    assert f'data-metric="cost_usd"><b>${total:,.4f}</b>' in html                # 3.875 + 0.5 idle
    today = sum(r["cost_usd"] for r in usage) - 1.25                             # 1.25 was spent yesterday
    assert f'data-metric="cost_today_usd"><b>${today:,.4f}</b>' in html
    idle_row = re.search(rf"{re.escape(IDLE_GROUP)}</td><td class=\"num\">(\d+)</td>", html)
    assert idle_row and idle_row.group(1) == "0"                                 # spend, not requests


def test_series_labels_idle_time_like_the_usage_report():
    led = Ledger(None)
    t = datetime(2026, 5, 10, 12, tzinfo=timezone.utc)
    led.append([LedgerRow(key_id="k", route="r", target="local", model="m", cost_usd=0.25, pricing="local", ts=t).to_dict(),
                LedgerRow(key_id="-", route="-", target="local", model="app", status="idle", attempts=0,
                          cost_usd=0.75, pricing="local", ts=t).to_dict()])
    by_route = {r["group"]: r for r in led.series("route", None)}
    usage = {r["group"]: r for r in led.query("route")}
    assert set(by_route) == set(usage) == {"r", IDLE_GROUP}
    assert by_route[IDLE_GROUP]["cost_usd"] == usage[IDLE_GROUP]["cost_usd"] == 0.75
    assert by_route[IDLE_GROUP]["requests"] == usage[IDLE_GROUP]["requests"] == 0
    assert {r["group"] for r in led.series("target", None)} == {"local"}
