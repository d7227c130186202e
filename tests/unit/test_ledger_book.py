"""LedgerBook: the ledger actor's pricing and aggregation without Ray (a memory ledger, a fake
clock, replica-seconds handed in as the actor would read them from the readiness board)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gateway.costs.ledger import Ledger
from gateway.costs.ledger_book import LedgerBook
from gateway.costs.schema import LedgerRow

T0 = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)
LOCAL = {"local": ("tiny-llm", 36.0)}                 # $36/h = $0.01 per replica-second


def _row(key="k1", route="chat", target="openai", tin=10, tout=5, status="ok", pricing="table", cost=0.0) -> dict:
    return LedgerRow(key_id=key, route=route, target=target, model="m", tokens_in=tin, tokens_out=tout,
                     status=status, cost_usd=cost, pricing=pricing, ts=T0).to_dict()


def _book() -> LedgerBook:
    return LedgerBook(Ledger(None), clock=lambda: T0)


def test_push_appends_priced_rows_holds_local_ones_and_returns_period_spend():
    book = _book()
    out = book.push([_row(cost=1.5), _row(target="local", pricing="local")], ["key:k1", "route:chat"], LOCAL)
    assert out == {("key:k1", "2026-05-10"): 1.5, ("key:k1", "2026-05"): 1.5,
                   ("route:chat", "2026-05-10"): 1.5, ("route:chat", "2026-05"): 1.5}
    assert len(book.ledger.memory) == 1
    assert book.stats()["pending_local"] == {"local": 1}
    assert book.local_targets == LOCAL and book.local_apps() == ["tiny-llm"]


def test_first_reading_is_a_baseline_then_replica_time_is_shared_by_tokens():
    book = _book()
    book.push([_row(target="local", pricing="local", tin=10, tout=0),
               _row(target="local", pricing="local", tin=20, tout=10)], [], LOCAL)
    book.price_local({"tiny-llm": 100.0})             # first sight: the seconds so far are not this period's
    assert len(book.ledger.memory) == 0 and book.stats()["pending_local"] == {"local": 2}
    book.price_local({"tiny-llm": 103.0})             # 3 s = $0.03 for this period
    rows = list(book.ledger.memory)
    # answered rows pay by tokens; the row with no output that did finish (ok) pays too
    assert [r["cost_usd"] for r in rows] == pytest.approx([0.0075, 0.0225])
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(0.03)
    assert book.ledger.totals.get("key:k1", "2026-05") == pytest.approx(0.03)


def test_replica_time_no_answer_paid_for_is_an_idle_row_outside_every_key():
    book = _book()
    book.push([], [], LOCAL)
    book.price_local({"tiny-llm": 10.0})
    book.push([_row(target="local", pricing="local", tin=5, tout=0, status="error")], [], LOCAL)
    book.price_local({"tiny-llm": 12.0})
    failed, idle = list(book.ledger.memory)
    assert failed["cost_usd"] == 0.0, "a request that got no answer pays nothing"
    assert idle["status"] == "idle" and idle["key_id"] == "-" and idle["cost_usd"] == pytest.approx(0.02)
    assert idle["ts"] == T0 and idle["target"] == "local" and idle["model"] == "tiny-llm"
    assert book.ledger.totals.get("key:k1", "2026-05") == 0.0


def test_without_a_board_local_rows_are_kept_unpriced():
    book = _book()
    book.push([_row(target="local", pricing="local")], [], LOCAL)
    book.price_local(None)
    (r,) = book.ledger.memory
    assert r["pricing"] == "local_unpriced" and r["cost_usd"] == 0.0
    assert book.stats()["pending_local"] == {}


def test_an_app_the_board_does_not_know_counts_zero_seconds():
    book = _book()
    book.push([], [], LOCAL)
    book.price_local({})
    book.price_local({"tiny-llm": 0.0})
    assert list(book.ledger.memory) == [] and book.last_seconds == {"local": 0.0}


def test_reads_include_local_rows_still_waiting_for_their_price():
    """A request answered by a local target is in the usage report as soon as it is pushed, not
    one or two flush periods later when its replica time is priced (and then exactly once)."""
    book = _book()
    book.push([_row(target="local", pricing="local", route="tiny", tin=7, tout=3)], [], LOCAL)
    before = book.ledger.query("route", mem=book.unflushed())
    assert [(r["group"], r["requests"], r["tokens_in"], r["cost_usd"]) for r in before] == [("tiny", 1, 7, 0.0)]
    book.price_local({"tiny-llm": 100.0})             # baseline: the row keeps waiting, still counted once
    assert book.ledger.query("route", mem=book.unflushed())[0]["requests"] == 1
    book.price_local({"tiny-llm": 101.0})             # priced: one replica-second at $0.01
    after = {r["group"]: r for r in book.ledger.query("route", mem=book.unflushed())}
    assert after["tiny"]["requests"] == 1 and after["tiny"]["cost_usd"] == pytest.approx(0.01)
