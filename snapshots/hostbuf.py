"""Host buffers for restore: one fresh uint8 tensor per rank.

A restore writes every byte of a fresh buffer once, so first-touch page faults are a large part
of its cost. Two ways to pay for them:
  empty     torch.empty(): pages fault in during the reads, so the faults are spread over the
            reader threads (the default);
  populate  an anonymous mapping with MAP_POPULATE: the kernel pre-faults every page in one pass
            inside mmap(), in the calling thread, before any read starts.
On the project's 2-core VM under heavy CPU contention (load 20-35), populate used ~10% less CPU
for a 0.75 GB rank but is serial; with idle cores the faults of `empty` run in parallel. bench/
restore.py reports both, so pick with THAWLINE_HOST_ALLOC=empty|populate per machine.

With CUDA present the buffer is pinned instead (cudaHostAlloc maps and locks the pages itself),
so the later host-to-device copy is a DMA.
"""
from __future__ import annotations

import mmap
import os

STRATEGIES = ("empty", "populate")


def default_strategy() -> str:
    strategy = os.environ.get("THAWLINE_HOST_ALLOC", "empty")
    if strategy not in STRATEGIES:
        raise ValueError(f"THAWLINE_HOST_ALLOC must be one of {STRATEGIES}, got {strategy!r}")
    return strategy


def allocate(nbytes: int, *, pinned: bool = False, strategy: str | None = None):
    """A fresh torch.uint8 tensor of nbytes."""
    import torch

    if pinned:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    strategy = strategy or default_strategy()
    if strategy not in STRATEGIES:
        raise ValueError(f"THAWLINE_HOST_ALLOC must be one of {STRATEGIES}, got {strategy!r}")
    populate = getattr(mmap, "MAP_POPULATE", None)
    if strategy == "empty" or populate is None or nbytes == 0:
        return torch.empty(nbytes, dtype=torch.uint8)
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    # frombuffer keeps `mapping` alive for as long as the tensor (or any view of it) lives.
    return torch.frombuffer(mapping, dtype=torch.uint8)
