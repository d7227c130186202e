"""The Parquet ledger on real fsspec stores (file://, memory://), and usage aggregation."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pyarrow.parquet as pq
import pytest

from gateway.costs.ledger import FlushError, Ledger
from gateway.costs.pricing import PriceBook
from gateway.costs.schema import LEDGER_COLUMNS, LedgerRow
from gateway.costs.tracker import CostTracker

T0 = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)


def _row(key="k1", route="chat", model="gpt-4o-mini", tin=1000, tout=100, ts=T0, **kw) -> dict:
    r = LedgerRow(key_id=key, route=route, target="openai", model=model, tokens_in=tin, tokens_out=tout,
                  ts=ts, cost_usd=(tin + tout) / 1e6, pricing="table", **kw)
    return r.to_dict()


@pytest.fixture(params=["file", "memory"])
def url(request, tmp_path):
    return f"file://{tmp_path}/ledger" if request.param == "file" else f"memory://ledger-{uuid.uuid4().hex}"


def test_flush_writes_day_partitions_and_query_reads_them_back(url):
    led = Ledger(url)
    led.append([_row(), _row(key="k2", tin=10, tout=1), _row(ts=T0 + timedelta(days=1), estimated=True)])
    assert led.flush() == 3 and led.buffer == []
    files = led._files(None)
    assert len(files) == 2 and all("/date=2026-05-1" in f for f in files)
    with led.fs.open(files[0], "rb") as f:
        assert tuple(pq.read_table(f).schema.names) == LEDGER_COLUMNS
    led.append([_row(key="k2", tin=5, tout=5)])                        # unflushed rows count too
    fresh = Ledger(url)                                                 # another process reading
    by_key = {r["group"]: r for r in led.query("key")}
    assert by_key["k1"]["requests"] == 2 and by_key["k1"]["tokens_in"] == 2000
    assert by_key["k1"]["estimated_requests"] == 1
    assert by_key["k2"]["requests"] == 2
    assert {r["group"]: r["requests"] for r in fresh.query("key")} == {"k1": 2, "k2": 1}
    since = {r["group"]: r["requests"] for r in fresh.query("key", T0 + timedelta(hours=1))}
    assert since == {"k1": 1}
    with pytest.raises(ValueError, match="group_by"):
        led.query("colour")


def test_budget_totals_rebuilt_from_the_store(url):
    led = Ledger(url)
    led.append([_row(tin=2_000_000, tout=0)])
    led.flush()
    again = Ledger(url)
    again.load_totals(T0)
    assert again.totals.get("key:k1", "2026-05") == pytest.approx(2.0)


def test_failed_flush_keeps_rows(tmp_path):
    blocker = tmp_path / "ledger"
    blocker.write_text("a file where the ledger directory should be")
    led = Ledger(f"file://{blocker}")
    led.append([_row(), _row()])
    with pytest.raises(FlushError):
        led.flush()
    assert len(led.buffer) == 2                                         # nothing lost, retried later


def test_memory_only_ledger_is_bounded():
    led = Ledger(None, memory_rows=10)
    led.append([_row() for _ in range(25)])
    assert len(led.memory) == 10
    assert led.totals.get("key:k1", "2026-05-10") == pytest.approx(25 * 1100 / 1e6)


def test_tracker_without_ray_prices_and_flushes_on_close(tmp_path):
    import asyncio

    led = Ledger(f"file://{tmp_path}/l")
    tr = CostTracker(PriceBook(), ledger=led)
    row = tr.record(LedgerRow(key_id="k", route="r", target="openai", model="gpt-4o-mini-2024-07-18",
                              tokens_in=1_000_000, tokens_out=1_000_000, tokens_cached=0))
    assert row.pricing == "table" and row.cost_usd == pytest.approx(0.15 + 0.60)
    asyncio.run(tr.close())
    assert led.flushed_rows == 1
    out = asyncio.run(tr.query(group_by="model", since=None))
    assert out[0]["group"] == "gpt-4o-mini-2024-07-18" and out[0]["cost_usd"] == pytest.approx(0.75)


def test_idle_replica_time_is_spend_not_requests():
    """`thawline usage` showed idle rows as dozens of "requests" under key/route "-"."""
    from gateway.costs.usage import IDLE_GROUP, aggregate, rows_to_table

    base = {"ts": datetime(2026, 11, 29, tzinfo=timezone.utc), "target": "local", "model": "tiny",
            "tokens_cached": 0, "latency_ms": 1.0, "ttft_ms": None, "attempts": 1, "estimated": False,
            "stream": False, "pricing": "local"}
    rows = [{**base, "key_id": "alice", "route": "tiny", "tokens_in": 5, "tokens_out": 3, "cost_usd": 0.01,
             "status": "ok"}] + [
        {**base, "key_id": "-", "route": "-", "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.02, "status": "idle"}] * 4
    by_route = {d["group"]: d for d in aggregate(rows_to_table(rows), "route")}
    assert by_route["tiny"]["requests"] == 1
    assert by_route[IDLE_GROUP]["requests"] == 0 and by_route[IDLE_GROUP]["cost_usd"] == 0.08
    by_model = {d["group"]: d for d in aggregate(rows_to_table(rows), "model")}
    assert by_model["tiny"]["requests"] == 1 and round(by_model["tiny"]["cost_usd"], 6) == 0.09
