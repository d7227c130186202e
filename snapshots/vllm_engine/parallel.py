"""Where a vLLM TP worker sits in its group, and the small all-gather the loader agrees over.

Runs inside vLLM's workers only (imports vLLM's distributed state).
"""
from __future__ import annotations

import torch.distributed as dist
from vllm.distributed import (
    get_pp_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    get_tp_group,
)

from snapshots.vllm_engine.engine_state import SnapshotMismatch


def parallel_position() -> tuple[int, int]:
    """(TP rank, TP size) of this worker; thawline snapshots are TP-only (pipeline size 1)."""
    if get_pp_group().world_size != 1:
        raise SnapshotMismatch("thawline snapshots support pipeline_parallel_size=1 only")
    return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()


def all_gather_tp(obj: dict) -> list[dict]:
    """All-gather a small dict over the engine's TP group (its gloo CPU group, on CPU and CUDA alike)."""
    group = get_tp_group()
    if group.world_size == 1:
        return [obj]
    out: list = [None] * group.world_size
    dist.all_gather_object(out, obj, group=group.cpu_group)
    return out
