"""Warm-pool claim bookkeeping: who owns which host, and which hosts are orphaned."""
from __future__ import annotations

import pytest

from serve_apps.llm.host_claims import ClaimBook


def test_live_owner_keeps_its_host_over_many_rounds():
    book = ClaimBook()
    book.add("host-a", "actor-1")
    for _ in range(5):
        assert book.orphans(lambda owner: True) == []
    assert book.stats() == {"owned": 1, "reaped": 0, "reap_rounds": 5}


def test_dead_owner_orphans_only_its_own_hosts():
    book = ClaimBook()
    book.add("host-a", "actor-1")
    b = book.add("host-b", "actor-2")
    alive = {"actor-1": True, "actor-2": False}
    orphans = book.orphans(alive.__getitem__)
    assert [c.host for c in orphans] == ["host-b"]
    book.reaped(b)
    assert book.stats()["owned"] == 1 and book.stats()["reaped"] == 1


def test_cleanly_stopped_host_is_forgotten_not_reaped():
    book = ClaimBook()
    c = book.add("host-a", "actor-1")
    (orphan,) = book.orphans(lambda owner: False)
    assert orphan is c
    book.forget(c)
    assert not book and book.stats()["reaped"] == 0


def test_liveness_check_that_fails_counts_as_alive():
    """A GCS hiccup must not kill a serving engine."""
    book = ClaimBook()
    book.add("host-a", "actor-1")

    def broken(owner):
        raise ConnectionError("gcs unavailable")

    assert book.orphans(broken) == []


def test_each_owner_checked_once_per_round():
    book = ClaimBook()
    book.add("h1", "actor-1")
    book.add("h2", "actor-1")
    calls = []
    book.orphans(lambda owner: calls.append(owner) or True)
    assert calls == ["actor-1"]


def test_claim_without_owner_is_refused():
    with pytest.raises(ValueError, match="owner"):
        ClaimBook().add("h", "")
