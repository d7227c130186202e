"""Where a snapshot's engine dir lives on a node: the same path at creation and at every restore.

    <engine dir> = $THAWLINE_ENGINE_DIR/<model>/<id>, else <cache dir>/engines/<model>/<id>
      hf/          config, tokenizer, generation files: the engine's `model` path
      vllm_cache/  VLLM_CACHE_ROOT (the torch.compile cache lives under it)
      nccl/        NCCL topology / search-graph dumps (CUDA)
"""
from __future__ import annotations

import os
from pathlib import Path

from snapshots.cache import default_cache_dir


def engine_root() -> Path:
    """Where snapshot engine dirs are materialised: $THAWLINE_ENGINE_DIR, else <cache dir>/engines."""
    env = os.environ.get("THAWLINE_ENGINE_DIR")
    if env:
        return Path(env)
    return default_cache_dir() / "engines"


def engine_dir(model: str, snapshot_id: str) -> Path:
    """Per-snapshot local dir: hf/ (the engine's `model`), vllm_cache/ (VLLM_CACHE_ROOT), nccl/.

    Creation and every restore on a node use the same path, so vLLM's compile-cache key (which
    hashes the model path) matches and the captured torch.compile artifacts are reused.
    """
    return engine_root() / model / snapshot_id
