"""Cache dir resolution: explicit > $THAWLINE_CACHE_DIR > $XDG_CACHE_HOME/thawline > ~/.cache/thawline."""
from __future__ import annotations

from pathlib import Path

from snapshots.cache import SnapshotCache, _store_key, default_cache_dir


def test_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("THAWLINE_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert SnapshotCache(tmp_path / "arg").dir == tmp_path / "arg"
    assert SnapshotCache().dir == tmp_path / "env"
    monkeypatch.delenv("THAWLINE_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "thawline"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == Path(tmp_path / "home" / ".cache" / "thawline")


def test_store_keys_are_distinct_and_path_safe():
    # same readable slug, different stores: the hash suffix keeps them apart
    a, b = _store_key("s3://bucket/a"), _store_key("s3://bucket_a")
    assert a != b and "/" not in a and a.startswith("s3-bucket_a-") and b.startswith("s3-bucket_a-")
