"""Writes that fail or fall short are never marked complete (issue 11, defects 4 and 6).

The node cache against S3 (moto). Failure injection: a real full disk (a small tmpfs, needs root
to mount; skipped otherwise) and, where a full disk cannot produce the case (pwrite returning
short counts or 0), os.pwrite wrapped at the syscall edge to return what the kernel may return.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from snapshots.cache import SnapshotCache
from snapshots.errors import SnapshotIOError
from snapshots.restore import restore
from snapshots.store import SnapshotStore

N = 70000  # float32 elements per tensor: 280 KB, 3 tensors = 840 KB per rank


def make_snapshot(store_url: str) -> str:
    w = SnapshotStore(store_url).create_writer("m", tp_size=1, part_bytes=256 << 10)
    with w.rank_writer(0) as rw:
        for i in range(3):
            rw.add(f"t{i}", np.arange(N, dtype=np.float32) + i)
    w.put_file("engine/hf/config.json", b"{}")
    w.commit({"engine": "none"})
    return w.url


def check_tensors(restored) -> None:
    for i in range(3):
        assert torch.equal(restored.tensors[f"t{i}"], torch.arange(N, dtype=torch.float32) + i), f"t{i}"


@pytest.fixture
def s3_snapshot(s3_bucket_url):
    return make_snapshot(f"{s3_bucket_url}/{uuid.uuid4().hex[:8]}")


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs: a real ENOSPC partway through a snapshot."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here ({exc})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True, timeout=30)


def leftovers(cache_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete markers of rank 0, *.partial files) under the cache dir."""
    return (list(cache_dir.rglob(".thawline-cache/rank-0.done")), list(cache_dir.rglob("*.partial")))


def test_short_pwrites_are_completed(s3_snapshot, tmp_path, monkeypatch):
    real = os.pwrite

    def short(fd, data, offset):  # the kernel may write fewer bytes than asked
        return real(fd, memoryview(data)[:4096], offset)

    monkeypatch.setattr(os, "pwrite", short)
    res = SnapshotCache(tmp_path / "c").fetch(s3_snapshot)
    monkeypatch.setattr(os, "pwrite", real)
    assert res.fetched
    check_tensors(restore(s3_snapshot, 0, cache_dir=str(tmp_path / "c")))


def test_pwrite_making_no_progress_fails_naming_the_file_and_marks_nothing(s3_snapshot, tmp_path, monkeypatch):
    real = os.pwrite
    calls = []

    def stuck(fd, data, offset):  # a part file's writes stop making progress after the first
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".bin.partial"):
            calls.append(offset)
            if len(calls) > 1:
                return 0
        return real(fd, data, offset)

    cache_dir = tmp_path / "c"
    monkeypatch.setattr(os, "pwrite", stuck)
    with pytest.raises(SnapshotIOError, match=r"part-\d+\.bin\.partial: write made no progress") as exc:
        SnapshotCache(cache_dir).fetch(s3_snapshot)
    monkeypatch.setattr(os, "pwrite", real)
    assert str(cache_dir) in str(exc.value)
    assert leftovers(cache_dir) == ([], [])
    res = SnapshotCache(cache_dir).fetch(s3_snapshot)  # nothing was marked: fetched again, fully
    assert res.fetched
    check_tensors(restore(s3_snapshot, 0, cache_dir=str(cache_dir), verify=False))


def test_full_disk_during_fetch_names_the_file_and_marks_nothing(s3_snapshot, small_disk, tmp_path):
    with pytest.raises(SnapshotIOError, match="No space left on device") as exc:
        SnapshotCache(small_disk / "c").fetch(s3_snapshot)
    assert str(small_disk / "c") in str(exc.value) and ".partial" in str(exc.value)
    assert leftovers(small_disk / "c") == ([], [])
    with pytest.raises(SnapshotIOError):  # a restore through the same full cache fails the same way,
        restore(s3_snapshot, 0, cache_dir=str(small_disk / "c"), verify=False)  # never with zeros
    check_tensors(restore(s3_snapshot, 0, cache_dir=str(tmp_path / "roomy"), verify=False))


def test_full_disk_while_writing_a_snapshot_names_the_part_file(small_disk):
    with pytest.raises(SnapshotIOError, match="No space left on device") as exc:
        make_snapshot((small_disk / "store").as_uri())
    assert "rank-0/part-" in str(exc.value) and str(small_disk / "store") in str(exc.value)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_cached_copy_is_discarded_and_fetched_again(s3_snapshot, tmp_path, damage):
    cache_dir = str(tmp_path / "c")
    first = restore(s3_snapshot, 0, cache_dir=cache_dir)
    check_tensors(first)
    local = SnapshotCache(cache_dir).ensure(s3_snapshot, ranks=[0])
    part = local / "rank-0" / "part-0.bin"
    good = part.read_bytes()
    bad = bytearray(good)
    if damage == "flip":
        bad[100] ^= 0xFF  # inside t0: same size, wrong bytes, so only the checksum can tell
    else:
        bad = bad[: len(bad) // 2]
    part.write_bytes(bytes(bad))
    again = restore(s3_snapshot, 0, cache_dir=cache_dir)  # verify=True: detects, refetches, succeeds
    check_tensors(again)
    assert not again.timings.cached
    assert part.read_bytes() == good
    assert restore(s3_snapshot, 0, cache_dir=cache_dir).timings.cached  # and is reused from then on

