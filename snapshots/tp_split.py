"""Tensor-parallel split of Llama-family HF parameters (pure logic, no I/O).

This is the offline path (`thawline snapshot create --engine none`): Megatron-style sharding of
the *unfused* HF parameters, so the store is exercised at TP>1 without an engine. Engine-made
snapshots (`--engine vllm`) store each worker's parameters as the engine holds them instead.

Rules (W has shape [out_features, in_features]):
  column-parallel, split dim 0: q/k/v_proj, gate/up_proj (weight and bias), embed_tokens
                                 (vocab-parallel), lm_head
  row-parallel,    split dim 1: o_proj.weight, down_proj.weight (their biases are replicated:
                                 the all-reduce sums the partial outputs, the bias is added once)
  replicated:                    norms, rotary inv_freq
Any other name is an error: a silent wrong split would only show up as garbage output.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

COLUMN, ROW, REPLICATED = "column", "row", "replicated"

_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"(^|\.)self_attn\.(q_proj|k_proj|v_proj)\.(weight|bias)$"), COLUMN),
    (re.compile(r"(^|\.)mlp\.(gate_proj|up_proj)\.(weight|bias)$"), COLUMN),
    (re.compile(r"(^|\.)embed_tokens\.weight$"), COLUMN),
    (re.compile(r"^lm_head\.weight$"), COLUMN),
    (re.compile(r"(^|\.)self_attn\.o_proj\.weight$"), ROW),
    (re.compile(r"(^|\.)mlp\.down_proj\.weight$"), ROW),
    (re.compile(r"(^|\.)(self_attn\.o_proj|mlp\.down_proj)\.bias$"), REPLICATED),
    (re.compile(r"(^|\.)(input_layernorm|post_attention_layernorm|norm)\.weight$"), REPLICATED),
    (re.compile(r"(^|\.)rotary_emb\.inv_freq$"), REPLICATED),
]


@dataclass(frozen=True)
class ShardSpec:
    kind: str  # COLUMN | ROW | REPLICATED
    dim: int | None  # split dimension; None when replicated


class TPSplitError(ValueError):
    pass


def shard_spec(name: str) -> ShardSpec:
    for pattern, kind in _RULES:
        if pattern.search(name):
            return ShardSpec(kind, {COLUMN: 0, ROW: 1, REPLICATED: None}[kind])
    raise TPSplitError(f"no tensor-parallel rule for parameter {name!r} (not a Llama-family parameter?)")


def shard_range(size: int, tp: int, rank: int, *, name: str = "?") -> tuple[int, int]:
    """[start, stop) of `rank`'s equal share of `size`; sizes must divide evenly."""
    if size % tp:
        raise TPSplitError(f"parameter {name!r}: dimension {size} is not divisible by tp={tp}")
    per = size // tp
    return rank * per, (rank + 1) * per


def rank_slices(name: str, shape: tuple[int, ...], tp: int, rank: int) -> tuple[slice, ...]:
    """Index of `rank`'s shard, e.g. (slice(0, 64),) or (slice(None), slice(32, 64))."""
    if not 0 <= rank < tp:
        raise TPSplitError(f"rank {rank} out of range for tp={tp}")
    spec = shard_spec(name)
    if spec.kind == REPLICATED or tp == 1:
        return tuple(slice(None) for _ in shape)
    if spec.dim >= len(shape):
        raise TPSplitError(f"parameter {name!r} of shape {tuple(shape)} has no dimension {spec.dim} to split")
    start, stop = shard_range(shape[spec.dim], tp, rank, name=name)
    return tuple(slice(start, stop) if d == spec.dim else slice(None) for d in range(len(shape)))


def split(name: str, tensor, tp: int) -> list:
    """All ranks' shards of one parameter (views of `tensor`)."""
    return [tensor[rank_slices(name, tuple(tensor.shape), tp, r)] for r in range(tp)]


def merge(name: str, shards: list):
    """Inverse of split: concatenate along the split dim; replicated shards must agree."""
    import torch

    spec = shard_spec(name)
    if spec.kind == REPLICATED or len(shards) == 1:
        first = shards[0]
        for i, s in enumerate(shards[1:], 1):
            if not torch.equal(first, s):
                raise TPSplitError(f"replicated parameter {name!r} differs between rank 0 and rank {i}")
        return first
    return torch.cat(list(shards), dim=spec.dim)


def check_config(config: dict, tp: int) -> None:
    """Fail early, naming the config field, when a Llama config cannot be split tp ways."""
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"):
        value = config.get(key)
        if key == "num_key_value_heads" and value is None:
            value = config.get("num_attention_heads")
        if value is not None and value % tp:
            raise TPSplitError(f"config.json {key}={value} is not divisible by tp={tp}")
