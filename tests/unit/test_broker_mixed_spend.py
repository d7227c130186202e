"""A restarted limit broker rebuilds a budget's spend from the ledger without undercounting a scope
that mixes local (accelerator-priced) and hosted spend. The ledger is real (file:// and memory://),
read back from its files as at a ledger actor's start; the broker's pool is the real QuotaPool.
No Ray."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import pytest

from gateway.costs.compaction import compact_day, day_dirs
from gateway.costs.ledger import Ledger
from gateway.costs.pricing import PriceBook
from gateway.costs.schema import LedgerRow
from gateway.costs.tracker import CostTracker
from gateway.limits.client import LimitClient
from gateway.limits.pool import QuotaPool, usd_to_nano

CELL = ("key:k", "usd_day")


@pytest.fixture(params=["file", "memory"])
def url(request, tmp_path):
    return f"file://{tmp_path}/ledger" if request.param == "file" else f"memory://ledger-{uuid.uuid4().hex}"


def _row(cost: float, pricing: str, now: datetime) -> dict:
    return LedgerRow(key_id="k", route="chat", target="t", model="m", cost_usd=cost, pricing=pricing,
                     ts=now).to_dict()


@pytest.mark.parametrize("compacted", [False, True], ids=["parts", "day-file"])
def test_restarted_broker_counts_local_spend_beside_hosted(url, compacted):
    now = datetime.now(timezone.utc)
    led = Ledger(url)
    led.append([_row(20.0, "table", now), _row(30.0, "local", now)])   # $20 hosted, $30 accelerator time
    led.flush()
    led.append([_row(0.5, "local", now)])
    led.flush()
    if compacted:
        (_, d), = day_dirs(led.fs, led.root)
        assert compact_day(led.fs, d) is not None
    # a ledger actor (re)started: its totals come from the files alone
    restarted = Ledger(url)
    restarted.load_totals(now)
    costs = CostTracker(PriceBook(), ledger=restarted)
    assert costs.period_spend("key:k", "usd_day") == pytest.approx(50.5)
    assert costs.period_local_spend("key:k", "usd_day") == pytest.approx(30.5)
    lim = LimitClient({}, {}, budgets={})
    lim.spend_floor, lim.local_floor = costs.period_spend, costs.period_local_spend
    floors = lim._floors([CELL])

    # the restarted broker: since the restart it settled $40 of hosted spend that no replica has
    # pushed to the ledger yet. Real spend is at least 40 + 30.5 (the ledger's hosted 20 may be
    # part of the 40); a $60 budget is used up.
    pool = QuotaPool()
    t = time.time()
    limit = usd_to_nano(60.0)
    assert pool.grant("r1", {CELL: (limit, usd_to_nano(40.0), 0)}, t, floors).ok
    pool.consume("r1", {CELL: (pool.cells[CELL].window, usd_to_nano(40.0))}, t)
    res = pool.grant("r2", {CELL: (limit, usd_to_nano(0.01), 0)}, t, floors)
    assert not res.ok, "the budget admitted past its limit: local spend was hidden by max(debt, floor)"
    assert pool.cells[CELL].spent() == usd_to_nano(40.0) + usd_to_nano(30.5)


def test_a_floor_without_a_local_part_keeps_the_old_meaning():
    pool = QuotaPool()
    t = time.time()
    assert pool.grant("r", {CELL: (usd_to_nano(10.0), 1, 0)}, t, {CELL: usd_to_nano(4.0)}).ok
    assert pool.cells[CELL].spent() == usd_to_nano(4.0)
