"""A store's contents are untrusted input (issue 11, defects 1, 5, 6), on real memory:// and S3 (moto).

A crafted snapshot.json / manifest must not make the node cache, restore or `thawline snapshot
fetch` touch files outside the snapshot dir; a malformed newest snapshot must not break
`<model>/latest`; corrupt files and unknown versions are reported naming the file.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from typer.testing import CliRunner

from cluster.cli.main import app
from tests.conftest import fresh_store_url
from snapshots import fsutil, manifest
from snapshots.cache import SnapshotCache
from snapshots.errors import SnapshotCorrupt, UnsafeSnapshotPath, UnsupportedFormatVersion
from snapshots.maprank import map_rank
from snapshots.restore import restore
from snapshots.store import SnapshotStore


@pytest.fixture(params=["memory", "s3"])
def remote_url(request, tmp_path):
    with fresh_store_url(request.param, request, tmp_path, "thawline-untrusted") as url:
        yield url


def make_snapshot(store_url: str, model: str = "m", tp: int = 1) -> str:
    w = SnapshotStore(store_url).create_writer(model, tp_size=tp, part_bytes=256 << 10)
    for r in range(tp):
        with w.rank_writer(r) as rw:
            for i in range(3):
                rw.add(f"t{i}", np.full((70000,), r * 10 + i, dtype=np.float32))
    w.put_file("engine/hf/config.json", b"{}")
    w.commit({"engine": "none"})
    return w.url


def edit_meta(store: SnapshotStore, url: str, edit) -> None:
    ref = store.resolve(url.split(store.url + "/", 1)[1])
    path = fsutil.join(ref.path, "snapshot.json")
    meta = json.loads(store.fs.cat_file(path))
    edit(meta, ref)
    store.fs.pipe_file(path, json.dumps(meta).encode())


# ---- defect 1: paths from snapshot.json -----------------------------------------------------------
def _attacks(tmp_path):
    target = tmp_path / "pwned.txt"
    # <cache>/snapshots/<store-key>/m/<id>/ is five levels below tmp_path (cache dir = tmp_path/c).
    return target, {"absolute-file": ("files", str(target)),
                    "dotdot-file": ("files", "../../../../../pwned.txt"),
                    "absolute-part": ("part", str(target))}


@pytest.mark.parametrize("attack", ["absolute-file", "dotdot-file", "absolute-part"])
def test_crafted_paths_never_leave_the_cache_dir(remote_url, tmp_path, attack):
    url = make_snapshot(remote_url)
    store = SnapshotStore(remote_url)
    target, attacks = _attacks(tmp_path)
    kind, rel = attacks[attack]

    def plant(meta, ref):
        # The object really exists on the store under that key, as an attacker would make it.
        store.fs.pipe_file(fsutil.join(ref.path, rel), b"pwned" * 1000)
        if kind == "files":
            meta["files"].append(rel)
        else:
            meta["ranks"][0]["parts"][0]["path"] = rel
            meta["ranks"][0]["parts"][0]["nbytes"] = 5000

    edit_meta(store, url, plant)
    cache_dir = tmp_path / "c"
    with pytest.raises(UnsafeSnapshotPath) as exc:
        SnapshotCache(cache_dir).fetch(url)
    assert repr(rel) in str(exc.value) and f"{url}/snapshot.json" in str(exc.value)
    with pytest.raises(UnsafeSnapshotPath):
        restore(url, 0, cache_dir=str(cache_dir))
    with pytest.raises(UnsafeSnapshotPath):
        restore(url, 0, use_cache=False)
    result = CliRunner().invoke(app, ["snapshot", "fetch", url, "--cache-dir", str(cache_dir)])
    assert result.exit_code == 1 and repr(rel) in result.stderr, result.stderr
    assert not target.exists()
    assert not list(tmp_path.rglob("pwned*"))


def test_manifest_rows_pointing_outside_are_refused(tmp_path):
    """A local snapshot whose manifest names an absolute file: restore, read_manifest and the host
    mapping path (map_rank) all refuse instead of reading it."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * (1 << 20))
    url = make_snapshot((tmp_path / "store").as_uri())
    store = SnapshotStore((tmp_path / "store").as_uri())
    ref = store.resolve("m/latest")
    rows = store.read_manifest(ref)
    bad = [manifest.ManifestRow(**{**r.__dict__, "file": str(secret)}) for r in rows]
    store.fs.pipe_file(fsutil.join(ref.path, "manifest.parquet"), manifest.encode(bad))
    with pytest.raises(UnsafeSnapshotPath, match=f"{ref.url}/manifest.parquet: unsafe path '{secret}'"):
        store.read_manifest(ref, 0)
    with pytest.raises(UnsafeSnapshotPath):
        restore(url, 0)
    with pytest.raises(UnsafeSnapshotPath):
        map_rank(ref.path, bad, rank=0, verify=False)


def test_fetch_refuses_non_store_schemes(monkeypatch):
    monkeypatch.delenv(fsutil.ALLOW_ANY_SCHEME_ENV, raising=False)
    result = CliRunner().invoke(app, ["snapshot", "fetch", "http://127.0.0.1:9/store/m/latest"])
    assert result.exit_code == 1
    assert "scheme 'http' is not a snapshot store" in result.stderr, result.stderr
    assert fsutil.ALLOW_ANY_SCHEME_ENV in result.stderr


# ---- defect 5: a malformed newest snapshot.json ---------------------------------------------------
@pytest.mark.parametrize("bad", ["[]", "null", '"x"', "{not json", "created_at-string"])
def test_latest_skips_a_malformed_newest_snapshot(remote_url, bad, caplog):
    first = make_snapshot(remote_url)
    second = make_snapshot(remote_url)
    store = SnapshotStore(remote_url)
    assert store.resolve("m/latest").url == second
    ref = store.resolve(second.split(remote_url + "/", 1)[1])
    path = fsutil.join(ref.path, "snapshot.json")
    if bad == "created_at-string":
        meta = json.loads(store.fs.cat_file(path))
        meta["created_at"] = "2099-01-01"  # would sort after every float if compared at all
        raw = json.dumps(meta)
    else:
        raw = bad
    store.fs.pipe_file(path, raw.encode())
    with caplog.at_level(logging.WARNING, logger="snapshots.store"):
        assert store.resolve("m/latest").url == first
    assert f"{second}/snapshot.json" in caplog.text
    assert restore(f"{remote_url}/m/latest", 0, use_cache=False).url == first


# ---- defect 6: errors name the file ---------------------------------------------------------------
def test_corrupt_manifest_error_names_the_file(remote_url, tmp_path):
    url = make_snapshot(remote_url)
    store = SnapshotStore(remote_url)
    ref = store.resolve("m/latest")
    store.fs.pipe_file(fsutil.join(ref.path, "manifest.parquet"), b"PAR1 this is not parquet")
    where = f"{url}/manifest.parquet"
    with pytest.raises(SnapshotCorrupt, match="not a valid manifest") as exc:
        store.verify(ref)
    assert where in str(exc.value)
    with pytest.raises(SnapshotCorrupt) as exc:
        restore(url, 0, use_cache=False)
    assert where in str(exc.value)
    with pytest.raises(SnapshotCorrupt) as exc:
        restore(url, 0, cache_dir=str(tmp_path / "c"))  # the cached copy names its own file
    assert "manifest.parquet" in str(exc.value) and str(tmp_path / "c") in str(exc.value)


def test_unknown_format_version_error_names_the_file(remote_url):
    url = make_snapshot(remote_url)
    store = SnapshotStore(remote_url)
    edit_meta(store, url, lambda meta, ref: meta.update(format_version=3))
    with pytest.raises(UnsupportedFormatVersion) as exc:
        store.inspect("m/latest")
    assert f"{url}/snapshot.json" in str(exc.value) and "format version 3" in str(exc.value)
    result = CliRunner().invoke(app, ["snapshot", "inspect", url])
    assert result.exit_code == 1 and f"{url}/snapshot.json" in result.stderr
