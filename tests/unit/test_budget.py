"""Budgets: per key and per route, per UTC day and month (pure; CostTracker without Ray)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gateway.costs.budget import SpendTotals, check
from gateway.costs.pricing import PriceBook
from gateway.costs.schema import BudgetSpec, LedgerRow, ModelPrice
from gateway.costs.tracker import CostTracker
from gateway.errors import BudgetExceeded

T0 = datetime(2026, 3, 31, 23, 59, tzinfo=timezone.utc)


def test_day_and_month_roll_over():
    totals = SpendTotals()
    totals.add("k1", "chat", 1.0, T0)
    budgets = {"key:k1": BudgetSpec(usd_per_day=1.0, usd_per_month=5.0)}
    over = check(budgets, ["key:k1", "route:chat"], totals.get, T0)
    assert over is not None and over.period == "day" and "k1" in over.message()
    # Next day (and next month): both periods start from zero.
    assert check(budgets, ["key:k1"], totals.get, datetime(2026, 4, 1, 0, 1, tzinfo=timezone.utc)) is None
    totals.prune(datetime(2026, 4, 1, tzinfo=timezone.utc))
    assert totals.usd == {}


def test_month_budget_blocks_across_days():
    totals = SpendTotals()
    for day in range(1, 6):
        totals.add("k1", "chat", 1.0, datetime(2026, 3, day, tzinfo=timezone.utc))
    over = check({"route:chat": BudgetSpec(usd_per_month=5.0)}, ["key:k1", "route:chat"], totals.get,
                 datetime(2026, 3, 6, tzinfo=timezone.utc))
    assert over is not None and over.scope == "route:chat" and over.period == "month"


def test_tracker_blocks_once_spent():
    price = ModelPrice(input_per_1m=1_000_000.0, output_per_1m=0.0)     # $1 per input token
    book = PriceBook(provider_overrides={"p": {"m": price}})
    tr = CostTracker(book, budgets={"key:k1": BudgetSpec(usd_per_day=3.0)}, clock=lambda: T0)
    tr.check_budget(key_id="k1", route="chat")
    row = tr.record(LedgerRow(key_id="k1", route="chat", target="p", model="m", tokens_in=2, ts=T0))
    assert row.cost_usd == 2.0 and row.pricing == "config"
    tr.check_budget(key_id="k1", route="chat")                         # $2 of $3: still open
    tr.record(LedgerRow(key_id="k1", route="chat", target="p", model="m", tokens_in=1, ts=T0))
    with pytest.raises(BudgetExceeded) as ei:
        tr.check_budget(key_id="k1", route="chat")
    assert ei.value.status == 429 and ei.value.code == "budget_exceeded"
    tr.check_budget(key_id="k2", route="chat")                         # other keys unaffected
