"""What a PEFT LoRA adapter dir says about itself: its config and its tensors' shapes.

Pure: reads adapter_config.json and the safetensors header (never the tensor data), no torch.
The hidden size comes from the shapes: a LoRA pair on a Linear(in, out) is lora_A [r, in] and
lora_B [out, r]; the projections that read the residual stream (q/k/v, gate/up, ...) have
in = hidden, those that write it (o, down, ...) have out = hidden.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterError, json_object
from .layout import CONFIG_FILE, WEIGHTS_FILE

# Projection names (last path component) whose in_features / out_features is the hidden size.
READS_HIDDEN = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "qkv_proj", "gate_up_proj",
                          "query_key_value", "W_pack", "c_attn", "c_fc", "fc1", "dense_h_to_4h", "Wqkv",
                          "query", "key", "value", "w1", "w3"})
WRITES_HIDDEN = frozenset({"o_proj", "down_proj", "out_proj", "c_proj", "fc2", "dense_4h_to_h", "w2"})
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight")
_MAX_HEADER = 100 << 20  # a safetensors header is JSON; past this it is not one


@dataclass(frozen=True)
class LoraShape:
    """What the push records about an adapter, before it meets its base."""

    rank: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    hidden_size: int
    base_model_name_or_path: str | None = None


def parse_lora_config(raw: bytes, *, name: str) -> dict:
    """adapter_config.json checked: a LORA adapter with an int `r`, a numeric `lora_alpha` and
    `target_modules` (a list, or a string PEFT reads as a regex / "all-linear")."""
    where = f"adapter {name!r}: {CONFIG_FILE}"
    cfg = json_object(raw, where)
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f"{where} has peft_type {cfg.get('peft_type')!r}; only LORA adapters can be pushed")
    r, alpha, targets = cfg.get("r"), cfg.get("lora_alpha"), cfg.get("target_modules")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterError(f"{where}: r is {r!r}, not a positive integer")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise AdapterError(f"{where}: lora_alpha is {alpha!r}, not a number")
    if isinstance(targets, list):
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise AdapterError(f"{where}: target_modules must name at least one module")
    elif not isinstance(targets, str) or not targets:
        raise AdapterError(f"{where}: target_modules is {targets!r}, not a list of module names")
    return cfg


def safetensors_shapes(path: Path, *, name: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the file's header alone."""
    where = f"adapter {name!r}: {path.name}"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= _MAX_HEADER:
                raise AdapterError(f"{where} is not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{where} is not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{where} is not a safetensors file (header is not an object)")
    shapes = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise AdapterError(f"{where}: tensor {key!r} has no valid shape")
        shapes[key] = tuple(shape)
    return shapes


def lora_pairs(shapes: dict[str, tuple[int, ...]], *, name: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """Module path -> {"A": shape, "B": shape} of every 2-D LoRA weight."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        m = _LORA_KEY.fullmatch(key)
        if m is None:
            continue
        if len(shape) != 2:
            raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE}: {key} has shape {list(shape)}, not 2-D")
        pairs.setdefault(m["module"], {})[m["ab"]] = shape
    if not pairs:
        raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} holds no lora_A / lora_B weights")
    return pairs


def pair_ranks(pairs: dict[str, dict[str, tuple[int, ...]]], *, name: str) -> dict[str, int]:
    """Module path -> rank; lora_A's rows and lora_B's columns must agree."""
    ranks = {}
    for module, ab in sorted(pairs.items()):
        got = {ab["A"][0]} if "A" in ab else set()
        got |= {ab["B"][1]} if "B" in ab else set()
        if len(got) != 1:
            raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE}: {module} has lora_A {list(ab.get('A', ()))} "
                               f"and lora_B {list(ab.get('B', ()))}, which disagree on the rank")
        ranks[module] = got.pop()
    return ranks


def infer_hidden(pairs: dict[str, dict[str, tuple[int, ...]]], *, name: str) -> int:
    """The hidden size every known projection agrees on; AdapterError if they disagree or none is known."""
    seen: dict[int, str] = {}
    for module, ab in sorted(pairs.items()):
        leaf = module.rsplit(".", 1)[-1]
        if leaf in READS_HIDDEN and "A" in ab:
            seen.setdefault(ab["A"][1], module)
        if leaf in WRITES_HIDDEN and "B" in ab:
            seen.setdefault(ab["B"][0], module)
    if not seen:
        raise AdapterError(f"adapter {name!r}: cannot tell its hidden size: {WEIGHTS_FILE} adapts none of the "
                           f"known projections ({', '.join(sorted(READS_HIDDEN | WRITES_HIDDEN))})")
    if len(seen) > 1:
        detail = ", ".join(f"{m} says {h}" for h, m in sorted(seen.items()))
        raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} disagrees with itself on the hidden size ({detail})")
    return next(iter(seen))


def describe(cfg: dict, shapes: dict[str, tuple[int, ...]], *, name: str) -> LoraShape:
    """The adapter's LoraShape from its checked config and tensor shapes."""
    pairs = lora_pairs(shapes, name=name)
    ranks = pair_ranks(pairs, name=name)
    r = cfg["r"]
    if not cfg.get("rank_pattern"):
        off = sorted(m for m, rk in ranks.items() if rk != r)
        if off:
            raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE}: {off[0]} has rank {ranks[off[0]]}, "
                               f"but {CONFIG_FILE} says r={r}")
    targets = cfg["target_modules"]
    if isinstance(targets, str):  # a regex or "all-linear": name what the tensors adapt
        targets = [m.rsplit(".", 1)[-1] for m in pairs]
    base = cfg.get("base_model_name_or_path")
    return LoraShape(rank=max(r, *ranks.values()), lora_alpha=float(cfg["lora_alpha"]),
                     target_modules=tuple(sorted(set(targets))), hidden_size=infer_hidden(pairs, name=name),
                     base_model_name_or_path=base if isinstance(base, str) else None)


def read_adapter_dir(src_dir, *, name: str) -> LoraShape:
    """Check a local PEFT adapter dir (adapter_config.json + adapter_model.safetensors) and describe it."""
    src = Path(src_dir)
    if not src.is_dir():
        raise AdapterError(f"adapter {name!r}: {src} is not a directory")
    config = src / CONFIG_FILE
    weights = src / WEIGHTS_FILE
    if not config.is_file():
        raise AdapterError(f"adapter {name!r}: {src} has no {CONFIG_FILE} (not a PEFT adapter dir)")
    if not weights.is_file():
        hint = " (adapter_model.bin: save it with safe_serialization=True)" if (src / "adapter_model.bin").exists() else ""
        raise AdapterError(f"adapter {name!r}: {src} has no {WEIGHTS_FILE}{hint}")
    cfg = parse_lora_config(config.read_bytes(), name=name)
    return describe(cfg, safetensors_shapes(weights, name=name), name=name)
