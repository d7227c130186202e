"""Restore engine, host path: one rank's tensors as views of private mappings of its part files.

    map_rank(snap_dir, rows, rank=r, verify=True) -> {name: torch.Tensor}

For tensors that live in host memory (CPU engines) restore() would read every byte into a fresh
buffer, and the caller would then copy it into its own parameters: two passes over the bytes and
a rank-sized buffer of fresh pages to fault in. Mapping the part files (MAP_PRIVATE, i.e.
copy-on-write) needs neither: with the files in the page cache (the engine start reads them ahead,
snapshots/pagecache.py) mapping is free, and the only pass over the bytes is the checksum. A
write to a tensor copies just that page; the snapshot file never changes. Device tensors (CUDA)
go through restore(..., device=...) instead: pinned buffer, one H2D copy.

`snap_dir` is a local directory: a file:// snapshot itself, or its node-local cache copy.
"""
from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor

from .errors import SnapshotCorrupt
from .paths import safe_relpath
from .rankio import default_threads, verify_rows
from .tensorbytes import torch_dtype


def map_rank(snap_dir: str, rows, *, rank: int, verify: bool = True, threads: int | None = None) -> dict:
    """Tensors of `rows` (this rank's manifest rows) as views of mappings of their part files.

    Raises SnapshotCorrupt naming the part file (missing, empty, truncated inside a tensor: checked
    before any view exists, since touching a view past the end of a mapped file is a SIGBUS) or
    the tensor (checksum mismatch, with verify)."""
    import torch

    mapped: dict[str, tuple[memoryview, "torch.Tensor"]] = {}
    for row in rows:
        if row.file in mapped:
            continue
        safe_relpath(row.file, where=f"{snap_dir}/manifest.parquet")
        try:
            with open(os.path.join(snap_dir, row.file), "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise SnapshotCorrupt(f"rank {rank}: part file {row.file} is empty", rank=rank)
                mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError:
            raise SnapshotCorrupt(f"rank {rank}: part file {row.file} is missing", rank=rank) from None
        mapped[row.file] = (memoryview(mapping), torch.frombuffer(mapping, dtype=torch.uint8))
    for row in rows:
        if row.offset + row.nbytes > len(mapped[row.file][0]):
            raise SnapshotCorrupt(f"rank {rank}: part file {row.file} is truncated inside tensor {row.name!r}",
                                  rank=rank, tensor=row.name)

    if verify:
        def check(row) -> None:
            verify_rows(rank, [row], lambda r: mapped[r.file][0][r.offset:r.offset + r.nbytes])

        # Largest first keeps the pool balanced; xxh3 releases the GIL.
        with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
            list(pool.map(check, sorted(rows, key=lambda r: -r.nbytes)))

    return {
        row.name: mapped[row.file][1][row.offset:row.offset + row.nbytes].view(torch_dtype(row.dtype)).view(tuple(row.shape))
        for row in rows
    }
