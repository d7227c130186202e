"""Leaf rank I/O: read or re-hash one rank of an already-resolved snapshot dir.

    read_rank(fs, snap_path, meta, rank, rows) -> (tensors, buffer, RestoreTimings)
    verify_rank(fs, snap_path, rank, rows, info) -> bytes checked

No resolving, no cache, no store: callers (store.verify, restore, maprank) hand in the
filesystem, the snapshot dir and the rows they already read. Reads are coalesced into large
ranges (snapshots/readplan.py) issued from a thread pool with `preadv` straight into one
preallocated buffer (pinned when CUDA is present, so a later H2D copy is a DMA).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from . import fsutil, hostbuf, readplan
from .checksum import checksum
from .errors import SnapshotCorrupt
from .format import RankInfo, SnapshotMeta
from .tensorbytes import torch_dtype

# 64 MiB pieces: large enough for sequential throughput per request, small enough that a 2-thread
# pool stays balanced and an S3 GET fits comfortably in memory.
CHUNK_BYTES = 64 << 20
# verify() streams a rank in ranges of at most this size instead of allocating the whole rank.
VERIFY_RANGE_BYTES = 64 << 20


@dataclass
class RestoreTimings:
    bytes: int  # bytes read into the buffer (tensors + alignment padding)
    seconds: float  # total wall time of restore() (fetch + read + verify + device copy)
    gbps: float  # bytes / seconds / 1e9
    tensor_bytes: int = 0
    fetch_s: float = 0.0  # remote -> node-local cache (0 when cached or local)
    read_s: float = 0.0  # ranged reads into the buffer
    verify_s: float = 0.0
    device_s: float = 0.0  # host buffer -> device copy
    threads: int = 0
    cached: bool = False  # served from an existing node-local cache copy
    pinned: bool = False


def default_threads(remote: bool = False) -> int:
    n = os.cpu_count() or 2
    # Local reads are memory-bandwidth/page-fault bound: one thread per core. Remote reads wait on
    # the network, so more requests in flight help.
    return max(2, min(n, 16)) if not remote else 16


class RankReader:
    """Ranged reads of one snapshot dir's files into buffer slices; local files use preadv."""

    def __init__(self, fs, snap_path: str):
        self.fs = fs
        self.snap = snap_path
        self.local = fsutil.is_local(fs)
        self._fds: dict[str, int] = {}

    def open(self, files) -> None:
        if not self.local:
            return
        for f in files:
            path = fsutil.join(self.snap, f)
            try:
                self._fds[f] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise SnapshotCorrupt(f"part file {f} is missing", rank=_rank_of(f)) from None

    def size(self, f: str) -> int:
        if self.local:
            return os.fstat(self._fds[f]).st_size
        try:
            return self.fs.size(fsutil.join(self.snap, f))
        except FileNotFoundError:
            raise SnapshotCorrupt(f"part file {f} is missing", rank=_rank_of(f)) from None

    def read_into(self, f: str, start: int, dest_view) -> None:
        n = len(dest_view)
        if self.local:
            fd = self._fds[f]
            got = 0
            while got < n:
                k = os.preadv(fd, [dest_view[got:]], start + got)
                if k == 0:
                    raise SnapshotCorrupt(f"part file {f} is truncated at byte {start + got}", rank=_rank_of(f))
                got += k
            return
        try:
            data = self.fs.cat_file(fsutil.join(self.snap, f), start=start, end=start + n)
        except FileNotFoundError:
            raise SnapshotCorrupt(f"part file {f} is missing", rank=_rank_of(f)) from None
        if len(data) != n:
            raise SnapshotCorrupt(f"part file {f} is truncated at byte {start + len(data)}", rank=_rank_of(f))
        dest_view[:] = data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _rank_of(part: str) -> int | None:
    try:
        return int(part.split("/", 1)[0].removeprefix("rank-"))
    except ValueError:
        return None


def _check_row_files(rank: int, rows, info: RankInfo) -> None:
    """Rows may only point into this rank's own part files (the manifest is untrusted input)."""
    parts = {p.path for p in info.parts}
    for row in rows:
        if row.rank != rank or row.file not in parts:
            raise SnapshotCorrupt(f"rank {rank}: manifest row {row.name!r} points at {row.file!r}, "
                                  f"not a part file of rank {rank}", rank=rank, tensor=row.name)


def _check_part_sizes(reader: RankReader, rank: int, info: RankInfo) -> None:
    for p in info.parts:
        size = reader.size(p.path)
        if size != p.nbytes:
            raise SnapshotCorrupt(f"rank {rank}: part file {p.path} has {size} bytes, expected {p.nbytes}", rank=rank)


def verify_rows(rank: int, rows, view_of: Callable) -> None:
    for row in rows:
        if checksum(view_of(row)) != row.checksum:
            raise SnapshotCorrupt(f"checksum mismatch in rank {rank} tensor {row.name!r} ({row.file} @ {row.offset})", rank=rank, tensor=row.name)


def verify_rank(fs, snap_path: str, rank: int, rows, info: RankInfo, *, threads: int | None = None,
                progress: Callable[[int], None] | None = None) -> int:
    """Stream one rank in bounded ranges and re-hash every tensor. Returns bytes checked."""
    _check_row_files(rank, rows, info)
    reader = RankReader(fs, snap_path)
    threads = threads or default_threads(not reader.local)
    reader.open([p.path for p in info.parts])
    try:
        _check_part_sizes(reader, rank, info)
        rplan = readplan.plan(rows, max_range_bytes=VERIFY_RANGE_BYTES)

        def one(rg: readplan.ReadRange) -> int:
            buf = bytearray(rg.nbytes)
            mv = memoryview(buf)
            reader.read_into(rg.file, rg.start, mv)
            verify_rows(rank, rg.rows, lambda row: mv[row.offset - rg.start: row.offset - rg.start + row.nbytes])
            if progress:
                progress(rg.nbytes)
            return rg.nbytes

        with ThreadPoolExecutor(max_workers=max(1, min(threads, 4))) as pool:
            return sum(pool.map(one, rplan.ranges))
    finally:
        reader.close()


def _cuda_available() -> bool:
    import torch

    try:
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no CUDA" for pinning purposes
        return False


def read_rank(fs, snap_path: str, meta: SnapshotMeta, rank: int, rows, *, verify: bool = True,
              threads: int | None = None, device: str | None = None,
              progress: Callable[[int], None] | None = None):
    """Core of restore() on an already-resolved snapshot dir: (tensors, buffer, timings)."""
    import torch

    info = meta.rank_info(rank)
    if len(rows) != info.num_tensors:
        raise SnapshotCorrupt(f"rank {rank}: manifest has {len(rows)} tensors, snapshot.json says {info.num_tensors}", rank=rank)
    _check_row_files(rank, rows, info)
    t0 = time.perf_counter()
    reader = RankReader(fs, snap_path)
    threads = threads or default_threads(not reader.local)
    rplan = readplan.plan(rows)
    pinned = _cuda_available()
    buf = hostbuf.allocate(rplan.buffer_bytes, pinned=pinned)
    mv = memoryview(buf.numpy())
    nbytes = _read_parts(reader, rank, info, rplan, mv, threads, progress)
    t_read = time.perf_counter()
    if verify:
        _verify_buffer(rank, rows, rplan, mv, threads)
    t_verify = time.perf_counter()
    src = buf
    if device is not None and torch.device(device).type != "cpu":
        src = buf.to(device, non_blocking=pinned)
        if src.device.type == "cuda":
            torch.cuda.synchronize(src.device)
    t_dev = time.perf_counter()
    tensors = {}
    for row in rows:
        p = rplan.positions[row.name]
        # Zero-copy: a dtype view of a slice of the one buffer (offsets are 4 KiB aligned).
        tensors[row.name] = src[p: p + row.nbytes].view(torch_dtype(row.dtype)).view(row.shape)
    timings = RestoreTimings(
        bytes=nbytes,
        seconds=t_dev - t0,
        gbps=0.0,
        tensor_bytes=sum(r.nbytes for r in rows),
        read_s=t_read - t0,
        verify_s=t_verify - t_read,
        device_s=t_dev - t_verify,
        threads=threads,
        pinned=pinned,
    )
    return tensors, src, timings


def _read_parts(reader: RankReader, rank: int, info, rplan, mv: memoryview, threads: int,
                progress: Callable[[int], None] | None) -> int:
    """Read the rank's part files into the buffer by the read plan's chunks, `threads` at a
    time; returns the bytes read."""
    reader.open([p.path for p in info.parts])
    try:
        _check_part_sizes(reader, rank, info)
        pieces = readplan.chunks(rplan.ranges, CHUNK_BYTES)

        def one(piece) -> int:
            f, start, end, dest = piece
            reader.read_into(f, start, mv[dest: dest + (end - start)])
            if progress:
                progress(end - start)
            return end - start

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return sum(pool.map(one, pieces))
    finally:
        reader.close()


def _verify_buffer(rank: int, rows, rplan, mv: memoryview, threads: int) -> None:
    """Every tensor's checksum, over its slice of the buffer."""
    def view_of(row):
        p = rplan.positions[row.name]
        return mv[p: p + row.nbytes]

    # xxhash releases the GIL, so hashing spreads over the same number of threads.
    groups = [rows[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda g: verify_rows(rank, g, view_of), groups))
