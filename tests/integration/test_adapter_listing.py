"""The LLM router's adapter listing (serve_apps/llm/adapter_listing.py) against a real file://
store: the board hears the names once per change (not every period), a store that fails keeps
the last listing, and an early fetch puts the adapter in the node cache once, checksums checked.
No Ray: the board is a recorder with the actor handle's `.remote` shape."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from cluster.models.tinyllama import generate_llama
from serve_apps.llm.adapter_listing import AdapterListing
from snapshots.adapters import AdapterStore
from snapshots.offline import create_offline_snapshot
from tests.lora_dirs import make_lora_dir


class _Method:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def remote(self, *args) -> None:
        self.calls.append(args)


class _Board:
    def __init__(self) -> None:
        self.calls: list = []
        self.note_adapters = _Method(self.calls)


@pytest.fixture
def store(tmp_path) -> tuple[str, AdapterStore]:
    url = (tmp_path / "store").as_uri()
    create_offline_snapshot(generate_llama(tmp_path / "tiny", preset="tiny"), tp=1, store_url=url, name="tiny")
    return url, AdapterStore(url)


def _wait(pred, timeout_s: float = 10.0) -> None:
    deadline = time.time() + timeout_s
    while not pred():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_the_board_hears_each_change_once(store, tmp_path, monkeypatch):
    url, adapters = store
    adapters.push(make_lora_dir(tmp_path / "a"), model="tiny", name="alice-1")
    board = _Board()
    monkeypatch.setenv("THAWLINE_CACHE_DIR", str(tmp_path / "cache"))
    listing = AdapterListing("app", url, "tiny", board, every_s=0.05).start()
    try:
        _wait(lambda: board.calls)
        time.sleep(0.3)  # several more periods, no change
        assert board.calls == [("app", ["alice-1"])]
        adapters.push(make_lora_dir(tmp_path / "b", seed=1), model="tiny", name="bob-1")
        _wait(lambda: len(board.calls) == 2)
        assert board.calls[-1] == ("app", ["alice-1", "bob-1"])
        adapters.rm("tiny", "alice-1")
        _wait(lambda: len(board.calls) == 3)
        assert board.calls[-1] == ("app", ["bob-1"])
    finally:
        listing.stop()


def test_a_failing_store_keeps_the_last_listing(store, tmp_path, monkeypatch):
    url, adapters = store
    adapters.push(make_lora_dir(tmp_path / "a"), model="tiny", name="alice-1")
    board = _Board()
    listing = AdapterListing("app", url, "tiny", board, every_s=0.05)
    listing.tick()
    monkeypatch.setattr(listing.store, "names", lambda model: (_ for _ in ()).throw(OSError("store down")))
    with pytest.raises(OSError):
        listing.tick()
    assert listing.names == frozenset({"alice-1"}) and board.calls == [("app", ["alice-1"])]


def test_an_early_fetch_caches_the_adapter_once(store, tmp_path, monkeypatch):
    url, adapters = store
    adapters.push(make_lora_dir(tmp_path / "a"), model="tiny", name="alice-1")
    monkeypatch.setenv("THAWLINE_CACHE_DIR", str(tmp_path / "cache"))
    listing = AdapterListing("app", url, "tiny", _Board(), every_s=60)
    fetched = []
    real = listing.store.fetch
    monkeypatch.setattr(listing.store, "fetch", lambda *a, **k: fetched.append(a) or real(*a, **k))
    listing.fetch_early("alice-1")
    listing.fetch_early("alice-1")  # already started: no second download
    _wait(lambda: list(Path(tmp_path / "cache").rglob("adapter_model.safetensors")))
    assert len(fetched) == 1
    listing.fetch_early("nope")  # no such adapter: forgotten, so a later push can be fetched
    _wait(lambda: "nope" not in listing._fetched)
