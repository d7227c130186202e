"""The snapshot store on real fsspec stores: file://, memory:// and S3 (moto server on loopback).

Round trips at TP=1/2 against the generated tiny Llama, exclusive claims under racing writers,
rank writers in other processes, corruption, unknown versions, missing parts, delete and gc.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import fresh_store_url
from snapshots import fsutil, tp_split
from snapshots.errors import (
    RankOutOfRange,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotExists,
    SnapshotNotFound,
    UnsupportedFormatVersion,
)
from snapshots.format import ALIGN
from snapshots.offline import create_offline_snapshot
from snapshots.restore import restore
from snapshots.store import SnapshotStore
from cluster.models.tinyllama import generate_llama

PART_BYTES = 256 << 10  # small parts so the tiny model spans several part files per rank


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate_llama(tmp_path_factory.mktemp("tiny"), preset="tiny")


@pytest.fixture(scope="module")
def tiny_state(tiny_dir):
    return load_file(str(tiny_dir / "model.safetensors"))


@pytest.fixture(params=["file", "memory", "s3"])
def store_url(request, tmp_path):
    with fresh_store_url(request.param, request, tmp_path, "thawline-test") as url:
        yield url


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def _snap(store_url, tiny_dir, tp=2):
    return create_offline_snapshot(tiny_dir, tp=tp, store_url=store_url, name="tiny", part_bytes=PART_BYTES)


@pytest.mark.parametrize("tp", [1, 2])
def test_round_trip(store_url, tiny_dir, tiny_state, cache_dir, tp):
    url = _snap(store_url, tiny_dir, tp)
    assert url.startswith(store_url + "/tiny/")
    ranks = [restore(url, r, cache_dir=cache_dir) for r in range(tp)]
    for name, tensor in tiny_state.items():
        merged = tp_split.merge(name, [rr.tensors[name] for rr in ranks])
        assert merged.dtype == tensor.dtype and torch.equal(merged, tensor), name
    for rr in ranks:
        assert rr.url == url and rr.meta.tp_size == tp
        base = rr.buffer.untyped_storage().data_ptr()
        # zero-copy: every tensor is a view of the rank's single buffer
        assert all(t.untyped_storage().data_ptr() == base for t in rr.tensors.values())
        assert rr.timings.bytes >= rr.timings.tensor_bytes > 0
    store = SnapshotStore(store_url)
    meta = store.inspect("tiny/latest")
    assert len(meta.ranks[0].parts) > 1
    assert "engine/hf/config.json" in meta.files and "engine/hf/tokenizer.json" in meta.files
    rows = store.read_manifest(store.resolve("tiny/latest"))
    assert len(rows) == len(tiny_state) * tp
    assert all(r.offset % ALIGN == 0 for r in rows)
    # a part only exceeds the limit when a single tensor does
    sizes = {r.name: r.nbytes for r in rows}
    assert all(p.nbytes <= max(PART_BYTES, max(sizes.values())) for ri in meta.ranks for p in ri.parts)
    if store_url.startswith("s3://"):
        direct = restore(url, 0, use_cache=False)
        assert direct.timings.fetch_s == 0.0
        assert all(torch.equal(direct.tensors[n], ranks[0].tensors[n]) for n in tiny_state)


def test_list_latest_inspect_delete(store_url, tiny_dir):
    store = SnapshotStore(store_url)
    assert store.list() == []
    first = _snap(store_url, tiny_dir, 1)
    second = _snap(store_url, tiny_dir, 2)
    assert [i.url for i in store.list()] == [first, second]
    assert store.resolve("tiny/latest").url == second
    assert store.inspect("tiny/latest").tp_size == 2
    store.delete("tiny/latest")
    assert store.resolve("tiny/latest").url == first
    with pytest.raises(SnapshotNotFound):
        store.resolve("tiny/" + second.rsplit("/", 1)[1])
    store.delete(first.split(store_url + "/", 1)[1])
    with pytest.raises(SnapshotNotFound, match="no committed snapshot of model 'tiny'"):
        store.resolve("tiny/latest")


def test_two_concurrent_writers_exactly_one_wins(store_url):
    store = SnapshotStore(store_url)
    barrier = threading.Barrier(2)

    def write(i):
        barrier.wait()
        try:
            w = store.create_writer("m", "race", tp_size=1)
        except SnapshotExists as exc:
            return ("lost", str(exc))
        with w.rank_writer(0) as rw:
            rw.add("x", torch.full((5000,), float(i)))
        w.commit({"engine": "none"})
        return ("won", i)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(write, [1, 2]))
    kinds = sorted(k for k, _ in results)
    assert kinds == ["lost", "won"], results
    winner = next(v for k, v in results if k == "won")
    loser_msg = next(v for k, v in results if k == "lost")
    assert "m/race already exists" in loser_msg
    got = restore(f"{store_url}/m/race", 0, cache_dir=None, use_cache=False)
    assert torch.equal(got.tensors["x"], torch.full((5000,), float(winner)))
    with pytest.raises(SnapshotExists):
        store.create_writer("m", "race", tp_size=1)


# numpy, not torch: RankWriter takes either, and the workers start much faster without torch.
_RANK_WORKER = """
import sys, numpy as np
from snapshots.store import SnapshotStore
url, rank = sys.argv[1], int(sys.argv[2])
with SnapshotStore(url).open_rank_writer("m", "multi", rank) as rw:
    for i in range(4):
        rw.add(f"w{i}", np.full((300, 7), rank * 10 + i, dtype=np.float16))
print("closed", rank)
"""


@pytest.mark.parametrize("store_url", ["file", "s3"], indirect=True)
def test_rank_writers_in_other_processes(store_url):
    store = SnapshotStore(store_url)
    writer = store.create_writer("m", "multi", tp_size=2)
    with pytest.raises(SnapshotError, match=r"ranks \[0, 1\] were not closed"):
        writer.commit()
    # Both ranks write at once, each from its own process, as vLLM TP workers do.
    procs = [subprocess.Popen([sys.executable, "-c", _RANK_WORKER, store_url, str(r)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    with pytest.raises(RankOutOfRange):
        store.open_rank_writer("m", "multi", 2)
    meta = store.open_writer("m", "multi").commit({"engine": {"name": "test", "version": "0"}, "kv_blocks": 7})
    assert meta.extra == {"kv_blocks": 7} and meta.engine.name == "test"
    for r in range(2):
        got = restore(f"{store_url}/m/multi", r, use_cache=False)
        assert got.tensors["w3"].dtype == torch.float16
        assert torch.equal(got.tensors["w3"], torch.full((300, 7), r * 10 + 3, dtype=torch.float16))


def _flip_byte(store: SnapshotStore, rank: int):
    ref = store.resolve("tiny/latest")
    rows = store.read_manifest(ref, rank)
    victim = max(rows, key=lambda r: r.nbytes)
    path = fsutil.join(ref.path, victim.file)
    data = bytearray(store.fs.cat_file(path))
    data[victim.offset + victim.nbytes // 2] ^= 0xFF
    store.fs.pipe_file(path, bytes(data))
    return victim


def test_flipped_byte_fails_verify_and_restore_naming_rank_and_tensor(store_url, tiny_dir, cache_dir):
    url = _snap(store_url, tiny_dir, 2)
    store = SnapshotStore(store_url)
    victim = _flip_byte(store, 1)
    with pytest.raises(SnapshotCorrupt) as exc:
        store.verify("tiny/latest")
    assert (exc.value.rank, exc.value.tensor) == (1, victim.name)
    assert f"rank 1 tensor {victim.name!r}" in str(exc.value)
    with pytest.raises(SnapshotCorrupt) as exc:
        restore(url, 1, cache_dir=cache_dir)
    assert (exc.value.rank, exc.value.tensor) == (1, victim.name)
    assert restore(url, 0, cache_dir=cache_dir).meta.tp_size == 2  # the other rank is intact
    unchecked = restore(url, 1, verify=False, cache_dir=cache_dir)  # verification is switchable
    assert victim.name in unchecked.tensors


def test_rank_out_of_range(store_url, tiny_dir, cache_dir):
    url = _snap(store_url, tiny_dir, 2)
    with pytest.raises(RankOutOfRange, match="rank 2 out of range: snapshot has tp_size=2"):
        restore(url, 2, cache_dir=cache_dir)


def test_unknown_format_version(store_url, tiny_dir, cache_dir):
    url = _snap(store_url, tiny_dir, 1)
    store = SnapshotStore(store_url)
    ref = store.resolve("tiny/latest")
    path = fsutil.join(ref.path, "snapshot.json")
    meta = json.loads(store.fs.cat_file(path))
    meta["format_version"] = 2
    store.fs.pipe_file(path, json.dumps(meta).encode())
    with pytest.raises(UnsupportedFormatVersion, match="format version 2"):
        store.inspect("tiny/latest")
    with pytest.raises(UnsupportedFormatVersion):
        restore(url, 0, cache_dir=cache_dir)
    [info] = store.list()
    assert "format version 2" in info.error


def test_missing_part_file(store_url, tiny_dir, cache_dir):
    url = _snap(store_url, tiny_dir, 2)
    store = SnapshotStore(store_url)
    ref = store.resolve("tiny/latest")
    store.fs.rm_file(fsutil.join(ref.path, "rank-0/part-1.bin"))
    with pytest.raises(SnapshotCorrupt, match="rank-0/part-1.bin is missing") as exc:
        store.verify(ref)
    assert exc.value.rank == 0
    with pytest.raises(SnapshotCorrupt, match="rank-0/part-1.bin is missing"):
        restore(url, 0, cache_dir=cache_dir)
    assert restore(url, 1, cache_dir=cache_dir).meta.tp_size == 2


def test_gc_removes_only_old_uncommitted_leftovers(store_url, tiny_dir):
    store = SnapshotStore(store_url)
    kept = _snap(store_url, tiny_dir, 1)
    w = store.create_writer("tiny", "abandoned", tp_size=1)
    with w.rank_writer(0) as rw:
        rw.add("x", torch.zeros(10))
    assert [i.url for i in store.list()] == [kept]
    assert store.gc(older_than_s=3600) == []  # a writer this young may still be running
    assert store.gc(older_than_s=0) == [f"{store.url}/tiny/abandoned"]
    assert [i.url for i in store.list()] == [kept]
    store.create_writer("tiny", "abandoned", tp_size=1)  # the id is free again
