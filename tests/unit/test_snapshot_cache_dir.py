"""Cache dir resolution: explicit > $THAWLINE_CACHE_DIR (with {node_id}) > $XDG_CACHE_HOME/thawline > ~/.cache/thawline."""
from __future__ import annotations

from pathlib import Path

import pytest

from snapshots.cache import SnapshotCache, _store_key, default_cache_dir, expand_node_id


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


def test_node_id_placeholder_gives_each_node_its_own_cache(monkeypatch, tmp_path):
    # Fake nodes share one disk: the template keeps their caches apart.
    monkeypatch.setenv("THAWLINE_CACHE_DIR", str(tmp_path / "nodes" / "{node_id}" / "cache"))
    monkeypatch.setenv("THAWLINE_NODE_ID", "ab12")
    assert SnapshotCache().dir == tmp_path / "nodes" / "ab12" / "cache"
    monkeypatch.setenv("THAWLINE_NODE_ID", "cd34")
    assert default_cache_dir() == tmp_path / "nodes" / "cd34" / "cache"
    assert expand_node_id("/c/{node_id}", "ef56") == "/c/ef56"
    assert expand_node_id("/plain/dir") == "/plain/dir"
    # `thawline status` lists each node's cache from a task on that node: it names the node itself
    monkeypatch.delenv("THAWLINE_NODE_ID")
    assert default_cache_dir(node_id="ff01") == tmp_path / "nodes" / "ff01" / "cache"


def test_node_id_placeholder_without_a_node_id_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("THAWLINE_CACHE_DIR", str(tmp_path / "{node_id}"))
    monkeypatch.delenv("THAWLINE_NODE_ID", raising=False)
    with pytest.raises(ValueError, match="THAWLINE_NODE_ID"):
        default_cache_dir()
    with pytest.raises(ValueError, match="not a node id"):
        expand_node_id("/c/{node_id}", "../etc")
