"""The parked-engine bookkeeping of a node's warm pool (serve_apps/llm/parked_book.py), the board's
tiers (gateway/readiness.py) and the args that turn parking on (serve_apps/llm/args.py)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.readiness import Board
from serve_apps.llm.args import LLMAppArgs, parked_key
from serve_apps.llm.parked_book import ParkedBook

GB = 10**9
SNAP = "file:///s/tiny/latest"


def _book():
    now = [0.0]
    book = ParkedBook(clock=lambda: now[0])
    return book, now


def test_park_take_and_lend_by_key():
    book, now = _book()
    assert book.park("a", "a/k1", "h1", GB, 4 * GB) == []
    now[0] = 1
    assert book.park("b", "b/k2", "h2", GB, 4 * GB) == []
    assert book.counts("a") == {"a/k1": 1} and book.counts("b") == {"b/k2": 1}
    assert book.lend("a/k1") == "h1" and book.counts("a") == {"a/k1": 1}  # lending keeps it parked
    assert book.take("a/other") is None and book.lend("a/other") is None
    assert book.take("a/k1") == "h1" and book.counts("a") == {}
    assert book.stats() == {"parked": 1, "parked_bytes": GB, "evicted": 0}


def test_budget_evicts_least_recently_used_and_never_the_new_one():
    book, now = _book()
    book.park("a", "a/k", "old", 2 * GB, 4 * GB)
    now[0] = 1
    book.park("b", "b/k", "mid", GB, 4 * GB)
    now[0] = 2
    book.lend("a/k")  # "old" was just used: "mid" is now the least recently used
    now[0] = 3
    assert book.park("c", "c/k", "new", 2 * GB, 4 * GB) == ["mid"]
    assert book.total_bytes() == 4 * GB and book.stats()["evicted"] == 1
    # one bigger than the whole budget is not kept, and nothing else is evicted for it
    assert book.park("d", "d/k", "huge", 5 * GB, 4 * GB) == ["huge"]
    assert book.apps() == {"a", "c"}
    assert sorted(book.drain()) == ["new", "old"] and not book


def test_a_redeploy_with_other_args_drops_the_stale_engines_of_that_app_only():
    book, _ = _book()
    book.park("a", "a/old", "h1", GB, 4 * GB)
    book.park("b", "b/k", "h2", GB, 4 * GB)
    assert book.drop_stale("a", "a/new") == ["h1"] and book.counts("b") == {"b/k": 1}
    assert book.stats()["evicted"] == 1
    assert book.drop_stale("b", None) == ["h2"] and not book  # the app is gone: all of its engines


def test_board_tiers_follow_parked_engines_and_snapshots():
    b = Board(clock=lambda: 0.0)
    assert b.get("t")["tier"] == "cold"
    b.note_snapshot("t")
    assert b.get("t")["tier"] == "cached"
    b.record_parked("t", "node1", {"t/k": 1})
    assert b.get("t")["tier"] == "parked" and b.get("t")["parked"] == 1
    assert b.parked_nodes("t", "t/k") == ["node1"] and b.parked_nodes("t", "t/other") == []
    b.report("t", "r1", "warm")
    assert b.get("t")["tier"] == "warm"
    b.report("t", "r1", "stopped")
    b.record_parked("t", "node1", {})
    assert b.get("t")["tier"] == "cached" and b.parked_nodes("t", "t/k") == []
    # after a redeploy with other args, engines of the old args do not make the app `parked`
    b.record_parked("t", "node1", {"t/old": 1})
    b.note_parked_key("t", "t/new", "router-2")
    assert b.get("t")["tier"] == "cached" and b.get("t")["parked"] == 0
    # the old router stopping after the new one started leaves the new key; the new one's clears it
    b.forget_parked_key("t", "router-1")
    assert b.current_parked_key("t") == "t/new"
    b.forget_parked_key("t", "router-2")
    assert b.current_parked_key("t") is None and b.current_parked_key("unknown") is None


def test_parking_args_are_checked_and_keyed_by_app_and_args():
    a = LLMAppArgs(served_model_id="t", snapshot_url=SNAP, parked_memory_gb=2)
    assert a.parks_engines and not LLMAppArgs(served_model_id="t", snapshot_url=SNAP).parks_engines
    assert parked_key("app", a) == parked_key("app", LLMAppArgs(served_model_id="t", snapshot_url=SNAP, parked_memory_gb=2))
    assert parked_key("app", a).startswith("app/") and parked_key("other", a) != parked_key("app", a)
    changed = LLMAppArgs(served_model_id="t", snapshot_url=SNAP, parked_memory_gb=2, engine_overrides={"max_model_len": 64})
    assert parked_key("app", changed) != parked_key("app", a)
    with pytest.raises(ValidationError, match="cpu only"):
        LLMAppArgs(served_model_id="t", snapshot_url=SNAP, parked_memory_gb=2, accelerator="gpu")
    assert not LLMAppArgs(served_model_id="t", snapshot_url=SNAP, parked_memory_gb=2, warm_pool_size=0).parks_engines
