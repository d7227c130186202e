"""CounterBatch (gateway/metrics.py): the Ray export's counters are summed per series and handed
over in one call per series, with the right tags, within flush_s, and on an explicit flush."""
from __future__ import annotations

import asyncio

from gateway.metrics import RAY_COUNTERS, CounterBatch, GatewayMetrics

TAGS = {k: t for k, (_, _, t) in RAY_COUNTERS.items()}


def test_sums_per_series_and_names_the_tags():
    got = []
    b = CounterBatch(lambda what, total, tags: got.append((what, total, tags)), TAGS)
    b.add(("requests", "r", "t", "ok", "k1"), 1)      # no event loop here: handed over at once
    assert got == [("requests", 1, {"route": "r", "target": "t", "status": "ok", "key": "k1"})]


async def test_counts_within_the_interval_go_over_as_one_call():
    got = []
    b = CounterBatch(lambda what, total, tags: got.append((what, total, tags)), TAGS, flush_s=0.05)
    for _ in range(100):
        b.add(("requests", "r", "t", "ok", "k1"), 1)
        b.add(("tokens", "r", "t", "m", "output"), 7)
    b.add(("requests", "r", "t", "error", "k1"), 1)
    assert got == []                                    # nothing per request
    deadline = asyncio.get_running_loop().time() + 5
    while not got and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert sorted(got, key=repr) == sorted([
        ("requests", 100, {"route": "r", "target": "t", "status": "ok", "key": "k1"}),
        ("requests", 1, {"route": "r", "target": "t", "status": "error", "key": "k1"}),
        ("tokens", 700, {"route": "r", "target": "t", "model": "m", "kind": "output"}),
    ], key=repr)
    b.add(("cost", "r", "t", "m", "k1"), 0.5)           # a later count starts a new interval
    b.flush()                                           # shutdown: at once, timer cancelled
    assert got[-1] == ("cost", 0.5, {"route": "r", "target": "t", "model": "m", "key": "k1"})
    assert b.pending == {} and b._timer is None


def test_without_ray_the_local_registry_still_counts_every_request():
    m = GatewayMetrics(ray_export=False)
    for _ in range(3):
        m.record_request(route="r", target="t", model="m", status="ok", tokens_in=2, tokens_out=3,
                         tokens_cached=0, cost_usd=0.0, ttft_s=0.01)
    m.flush()
    text = m.render()[0].decode()
    assert 'thawline_gateway_requests_total{route="r",status="ok",target="t"} 3.0' in text
