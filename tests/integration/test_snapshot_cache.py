"""Node-local cache tier against S3 (moto): fetch once, reuse, validate, concurrent fetchers."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from snapshots.cache import SnapshotCache
from snapshots.errors import RankOutOfRange
from snapshots.offline import create_offline_snapshot
from snapshots.restore import restore
from snapshots.store import SnapshotStore
from cluster.models.tinyllama import generate_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate_llama(tmp_path_factory.mktemp("tiny"), preset="tiny")


@pytest.fixture
def s3_snapshot(s3_bucket_url, tiny_dir):
    store_url = f"{s3_bucket_url}/{uuid.uuid4().hex[:8]}"
    return create_offline_snapshot(tiny_dir, tp=2, store_url=store_url, name="tiny", part_bytes=256 << 10)


def _file_bytes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_fetch_once_then_reuse(s3_snapshot, tmp_path):
    cache = SnapshotCache(tmp_path / "c")
    meta = SnapshotStore.for_snapshot(s3_snapshot)[0].inspect(s3_snapshot.rsplit("/", 2)[1] + "/latest")
    first = cache.fetch(s3_snapshot.rsplit("/", 1)[0] + "/latest")  # <model>/latest resolves here too
    assert first.fetched and first.bytes >= meta.total_bytes
    assert first.path.name == meta.snapshot_id
    second = cache.fetch(s3_snapshot)
    assert (second.fetched, second.bytes, second.path) == (False, 0, first.path)
    # the cached copy is itself a complete file:// snapshot
    local = SnapshotStore(first.path.parent.parent.as_uri())
    assert local.verify(f"tiny/{meta.snapshot_id}").tensors == sum(r.num_tensors for r in meta.ranks)


def test_only_requested_ranks_are_fetched(s3_snapshot, tmp_path):
    cache = SnapshotCache(tmp_path / "c")
    res = cache.fetch(s3_snapshot, ranks=[1])
    assert (res.path / "rank-1").is_dir() and not (res.path / "rank-0").exists()
    assert (res.path / "engine/hf/config.json").is_file()
    with pytest.raises(RankOutOfRange):
        cache.fetch(s3_snapshot, ranks=[5])
    again = cache.fetch(s3_snapshot, ranks=[0, 1])  # rank 0 only now
    assert again.fetched and (res.path / "rank-0").is_dir()


def test_damaged_cache_copy_is_detected_and_refetched(s3_snapshot, tmp_path):
    cache = SnapshotCache(tmp_path / "c")
    path = cache.ensure(s3_snapshot)
    part = path / "rank-0" / "part-0.bin"
    good = part.read_bytes()
    part.write_bytes(good[: len(good) // 2])  # truncated, e.g. a disk-full copy
    res = cache.fetch(s3_snapshot)
    assert res.fetched and part.read_bytes() == good
    assert res.bytes == sum(p.stat().st_size for p in (path / "rank-0").glob("part-*.bin"))


def test_restore_goes_through_the_cache(s3_snapshot, tmp_path):
    cold = restore(s3_snapshot, 1, cache_dir=str(tmp_path / "c"))
    warm = restore(s3_snapshot, 1, cache_dir=str(tmp_path / "c"))
    assert (cold.timings.cached, warm.timings.cached) == (False, True)
    assert cold.timings.fetch_s > 0
    assert all(torch.equal(cold.tensors[n], warm.tensors[n]) for n in cold.tensors)


def test_local_snapshot_is_read_in_place(tiny_dir, tmp_path):
    url = create_offline_snapshot(tiny_dir, tp=1, store_url=(tmp_path / "store").as_uri(), name="tiny")
    cache = SnapshotCache(tmp_path / "c")
    res = cache.fetch(url)
    assert not res.fetched and res.path == tmp_path / "store" / "tiny" / url.rsplit("/", 1)[1]
    assert not (tmp_path / "c").exists()


_FETCHER = """
import json, os, sys
os.environ["THAWLINE_FETCH_BY"] = sys.argv[3]
from snapshots.cache import SnapshotCache
res = SnapshotCache(sys.argv[2]).fetch(sys.argv[1])
print(json.dumps({"fetched": res.fetched, "bytes": res.bytes, "path": str(res.path)}))
"""


def test_two_processes_fetching_at_once_download_once(s3_snapshot, tmp_path):
    # e.g. a node's prewarm prefetch and a replica's restore asking for the same snapshot
    cache_dir = str(tmp_path / "shared-cache")
    procs = [subprocess.Popen([sys.executable, "-c", _FETCHER, s3_snapshot, cache_dir, f"fetcher-{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert results[0]["path"] == results[1]["path"]
    path = Path(results[0]["path"])
    assert not [p for p in path.rglob("*.partial")]
    # Every byte crossed the network exactly once. Locks are per component (shared files, each
    # rank), so usually one process fetches everything while the other waits; in a rare
    # interleaving the waiter may take the next rank itself, which still downloads nothing twice.
    downloaded = sum(n for rel, n in _file_bytes(path).items()
                     if rel != "snapshot.json" and not rel.startswith(".thawline-cache"))
    assert sum(r["bytes"] for r in results) == downloaded > 0
    assert any(r["fetched"] for r in results)
    # The cache's download log says who fetched what, and adds up to the same bytes.
    cache = SnapshotCache(cache_dir)
    for i, r in enumerate(results):
        assert sum(d["bytes"] for d in cache.downloads(by=f"fetcher-{i}")) == r["bytes"]
    assert {d["snapshot_url"] for d in cache.downloads()} == {s3_snapshot}
    meta = json.loads((path / "snapshot.json").read_text())
    for rank in meta["ranks"]:
        for part in rank["parts"]:
            assert (path / part["path"]).stat().st_size == part["nbytes"]
