"""Host buffers for restore: one fresh uint8 tensor per rank.

A restore writes every byte of a fresh buffer once, so first-touch page faults are a large part
of its cost. Two ways to pay for them:
  empty     torch.empty(): pages fault in during the reads, so the faults are spread over the
            reader threads (the default);
  populate  an anonymous mapping with MAP_POPULATE: the kernel pre-faults every page in one pass
            inside mmap(), in the calling thread, before any read starts.
Under heavy CPU contention populate can cost less CPU, but it is serial; with idle cores the
faults of `empty` run in parallel. Which wins depends on the machine: bench/restore.py reports
both, so pick with THAWLINE_HOST_ALLOC=empty|populate per machine.

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


# ---------------------------------------------------------------------------------------------
# GPU restore staging: host bytes -> device parameters through a bounded pinned staging buffer.
# The device holds only the parameters vLLM allocated (the weights) while a rank restores: no
# device-side copy of the whole rank, so peak device memory is the weights, not ~2x.

DEFAULT_STAGING_BYTES = 256 << 20  # THAWLINE_STAGING_BYTES overrides


def staging_bytes() -> int:
    value = int(os.environ.get("THAWLINE_STAGING_BYTES", DEFAULT_STAGING_BYTES))
    if value < 4096:
        raise ValueError(f"THAWLINE_STAGING_BYTES must be at least 4096, got {value}")
    return value


class StagePiece(tuple):
    """(name, offset, nbytes, staging_offset): bytes [offset, offset+nbytes) of tensor `name`
    go through staging[staging_offset: staging_offset+nbytes]."""

    __slots__ = ()

    def __new__(cls, name: str, offset: int, nbytes: int, staging_offset: int):
        return super().__new__(cls, (name, offset, nbytes, staging_offset))

    name = property(lambda self: self[0])
    offset = property(lambda self: self[1])
    nbytes = property(lambda self: self[2])
    staging_offset = property(lambda self: self[3])


def plan_staging(sizes: list[tuple[str, int]], bound: int) -> list[list[StagePiece]]:
    """Chunks of at most `bound` bytes covering every tensor's bytes exactly once, in order.
    A tensor larger than the bound is split over several chunks. Pure: unit-tested."""
    if bound <= 0:
        raise ValueError("staging bound must be positive")
    chunks: list[list[StagePiece]] = []
    current: list[StagePiece] = []
    used = 0
    for name, nbytes in sizes:
        offset = 0
        while offset < nbytes:
            if used == bound:
                chunks.append(current)
                current, used = [], 0
            take = min(nbytes - offset, bound - used)
            current.append(StagePiece(name, offset, take, used))
            used += take
            offset += take
    if current:
        chunks.append(current)
    return chunks


def _bytes_of(t):
    import torch

    return t.reshape(-1).view(torch.uint8)


def copy_into_params(host: dict, params: dict, *, bound: int | None = None) -> int:
    """Copy host tensors into same-named (device) parameters in chunks of at most `bound` bytes.

    Source pages that are not pinned go through one of two pinned staging buffers of `bound`
    bytes (alternating, so filling one overlaps the DMA of the other); pinned sources are copied
    directly, still at most `bound` bytes in flight. Non-contiguous parameters fall back to a
    per-tensor copy. Returns the largest staging chunk used (<= bound)."""
    import torch

    bound = bound or staging_bytes()
    cuda = any(p.device.type == "cuda" for p in params.values())
    direct = {n: t for n, t in host.items() if not params[n].data.is_contiguous() or not t.is_contiguous()}
    for name, t in direct.items():
        params[name].data.copy_(t)
    names = [n for n in host if n not in direct]
    plan = plan_staging([(n, host[n].numel() * host[n].element_size()) for n in names], bound)
    if not plan:
        return 0
    biggest = max(sum(p.nbytes for p in chunk) for chunk in plan)
    pinned_src = cuda and all(host[n].is_pinned() for n in names)
    staging = [] if pinned_src else [torch.empty(biggest, dtype=torch.uint8, pin_memory=cuda)
                                     for _ in range(2 if cuda else 1)]
    events: list = [None, None]
    src_b = {n: _bytes_of(host[n]) for n in names}
    dst_b = {n: _bytes_of(params[n].data) for n in names}
    for i, chunk in enumerate(plan):
        slot = i % 2
        if events[slot] is not None:
            events[slot].synchronize()  # this staging buffer's previous DMA is done
        for p in chunk:
            src = src_b[p.name][p.offset: p.offset + p.nbytes]
            dst = dst_b[p.name][p.offset: p.offset + p.nbytes]
            if staging:
                buf = staging[slot % len(staging)][p.staging_offset: p.staging_offset + p.nbytes]
                buf.copy_(src)
                src = buf
            dst.copy_(src, non_blocking=cuda)
        if cuda:
            events[slot] = torch.cuda.Event()
            events[slot].record()
    if cuda:
        torch.cuda.synchronize()
    return biggest
