"""map_rank (the restore engine's host path): tensors as copy-on-write views of the part files.

Against real file:// snapshots of the generated tiny Llama: same bytes as restore(), writes never
reach the snapshot, and every way a part file can be damaged is named before any tensor is used.
"""
from __future__ import annotations

import os

import pytest
import torch

from snapshots.errors import SnapshotCorrupt
from snapshots.maprank import map_rank
from snapshots.restore import restore
from snapshots.store import SnapshotStore
from tests.integration.test_snapshot_store import _snap, tiny_dir  # noqa: F401  (fixture)


@pytest.fixture
def snapshot(tmp_path, tiny_dir):  # noqa: F811
    url = _snap(f"file://{tmp_path}/store", tiny_dir, tp=2)
    store, ref = SnapshotStore.for_snapshot(url)
    resolved = store.resolve(ref)
    return url, resolved.path, store.read_manifest(resolved)


def test_mapped_tensors_equal_restored_ones_and_writes_stay_private(snapshot):
    url, path, rows = snapshot
    for rank in (0, 1):
        mine = [r for r in rows if r.rank == rank]
        mapped = map_rank(path, mine, rank=rank, verify=True)
        restored = restore(url, rank, verify=True).tensors
        assert set(mapped) == set(restored) == {r.name for r in mine}
        for name, t in mapped.items():
            assert t.dtype == restored[name].dtype and torch.equal(t, restored[name]), name
    # Copy-on-write: writing a mapped tensor changes this process's view, never the file.
    before = {p: open(os.path.join(path, p), "rb").read() for p in {r.file for r in rows}}
    row = max((r for r in rows if r.rank == 0), key=lambda r: r.nbytes)
    t = map_rank(path, [row], rank=0)[row.name]
    t.zero_()
    assert not torch.equal(t, restore(url, 0).tensors[row.name])
    assert all(open(os.path.join(path, p), "rb").read() == data for p, data in before.items())


def _damage(path: str, row, how: str) -> None:
    f = os.path.join(path, row.file)
    if how == "flip":
        with open(f, "r+b") as fh:
            fh.seek(row.offset + row.nbytes // 2)
            b = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([b[0] ^ 0xFF]))
    elif how == "truncate":
        os.truncate(f, row.offset + row.nbytes // 2)
    elif how == "remove":
        os.unlink(f)


@pytest.mark.parametrize("how, message", [
    ("flip", "checksum mismatch in rank 1 tensor"),
    ("truncate", "is truncated inside tensor"),
    ("remove", "is missing"),
])
def test_damaged_part_files_are_named(snapshot, how, message):
    _, path, rows = snapshot
    mine = [r for r in rows if r.rank == 1]
    victim = max(mine, key=lambda r: r.nbytes)
    _damage(path, victim, how)
    with pytest.raises(SnapshotCorrupt, match=message) as err:
        map_rank(path, mine, rank=1, verify=True)
    assert err.value.rank == 1
    assert victim.file in str(err.value) or victim.name in str(err.value)
    if how != "remove":
        assert err.value.tensor == victim.name
