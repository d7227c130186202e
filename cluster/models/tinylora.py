"""Generate PEFT LoRA adapters for a generated Llama (`tinyllama.generate_llama`): nothing from a hub.

`generate_lora(base_dir, out_dir, seed=...)` wraps the base model in a peft `LoraConfig` and
writes `adapter_config.json` + `adapter_model.safetensors` with `save_pretrained`, the layout
vLLM's `LoRARequest` and peft's `PeftModel.from_pretrained` both load.

The LoRA weights are not peft's init (which zeroes lora_B, i.e. a no-op adapter): every lora_A /
lora_B tensor is drawn from numpy's PCG64 seeded per (seed, tensor name), like tinyllama's weights,
and sized so that the adapter's delta (alpha/r * B @ A) is `scale` times the base projection's own
weight scale (1/sqrt(fan_in)). At the default scale every seed changes the tiny model's greedy
output within the first few tokens, versus the base and versus other seeds.

Deterministic: the same (base, seed, rank, target_modules, scale) gives byte-identical files.
peft's own output is not, as is: `target_modules` is a set, written in hash order (varies with
PYTHONHASHSEED), and `base_model_name_or_path` / the README model card record the base's path.
So the config is rewritten with sorted target_modules and a stable base name (the base dir's
name unless `base_model_name` is given), and the model card is not kept.

Importing this module does not import torch, transformers or peft (only `generate_lora` does).
"""
from __future__ import annotations

import json
import math
import os
import sys
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from cluster.models.tinyllama import built_beside

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def _uniform(name: str, seed: int, shape: tuple[int, ...], std: float) -> np.ndarray:
    """uniform(-a, a) with std `std`, seeded per (seed, tensor name): independent of order."""
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(name.encode())]))
    half_width = np.float32(math.sqrt(3.0) * std)
    values = rng.random(shape, dtype=np.float32)
    values *= np.float32(2) * half_width
    values -= half_width
    return values


def _write_adapter(base: Path, out: Path, *, seed: int, rank: int, alpha: float,
                   target_modules: Sequence[str], scale: float, base_name: str) -> None:
    import torch

    # Nothing below should draw from torch's RNG (peft's init is overwritten); pinned all the same,
    # in a forked RNG state so the caller's torch RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _build_and_save(base, out, seed=seed, rank=rank, alpha=alpha, target_modules=target_modules,
                        scale=scale, base_name=base_name)
    # Stable config: target_modules sorted (peft writes a set in hash order), base name pinned.
    cfg_path = out / CONFIG_NAME
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["base_model_name_or_path"] = base_name
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "README.md").unlink(missing_ok=True)  # peft's model card: not needed to load the adapter


def _build_and_save(base: Path, out: Path, *, seed: int, rank: int, alpha: float,
                    target_modules: Sequence[str], scale: float, base_name: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import LlamaForCausalLM

    # The base in its own dtype (a bf16 bench model stays bf16 in memory); peft keeps the LoRA
    # weights float32 (autocast_adapter_dtype), so the adapter is float32 whatever the base.
    model = LlamaForCausalLM.from_pretrained(str(base), dtype="auto")
    # peft records the base's path as base_model_name_or_path: give it the stable name instead.
    model.config.name_or_path = base_name
    model.name_or_path = base_name
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_name)
    peft_model = get_peft_model(model, config)

    scaling = alpha / rank
    found: set[str] = set()
    with torch.no_grad():
        for module_name, module in peft_model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            found.add(module_name.rsplit(".", 1)[-1])
            lora_a = module.lora_A["default"].weight  # (r, in)
            lora_b = module.lora_B["default"].weight  # (out, r)
            fan_in = lora_a.shape[1]
            # delta = scaling * B @ A has entries of std scaling * sqrt(r) * std_a * std_b; with
            # std_a = 1/sqrt(fan_in) that is `scale` times the base weight's 1/sqrt(fan_in).
            std_b = scale / (scaling * math.sqrt(rank))
            for tensor, part, std in ((lora_a, "lora_A", 1.0 / math.sqrt(fan_in)), (lora_b, "lora_B", std_b)):
                # Named as in the saved file (peft strips the adapter name "default").
                name = f"{module_name}.{part}.weight"
                tensor.copy_(torch.from_numpy(_uniform(name, seed, tuple(tensor.shape), std)))
    missing = set(target_modules) - found
    if missing:
        raise ValueError(f"target_modules {sorted(missing)} match no module of the base model")

    # save_embedding_layers=False: "auto" would look base_model_name_or_path up on the Hub.
    peft_model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)


def generate_lora(base_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int, rank: int = 8,
                  target_modules: Sequence[str] = DEFAULT_TARGETS, scale: float = 1.0,
                  alpha: float | None = None, base_model_name: str | None = None) -> Path:
    """Write a deterministic peft LoRA adapter for the HF Llama in `base_dir` to `out_dir`.

    seed: draws every LoRA weight (different seeds give different adapters).
    rank: LoRA r. vLLM serves it only with max_lora_rank >= rank, and max_lora_rank must be one of
        1, 8, 16, 32, 64, ... (vllm.config.lora.MaxLoRARanks): a rank-4 adapter needs max_lora_rank=8.
    target_modules: projection names to adapt; sorted in the written config.
    scale: the delta's entry scale relative to the base projection weights (1/sqrt(fan_in)):
        1.0 changes the tiny model's greedy output within a few tokens; 0 is a no-op adapter.
    alpha: lora_alpha (default 2 * rank, so peft/vLLM's alpha/r scaling of 2 is exercised).
    base_model_name: written as base_model_name_or_path (default: the base dir's name).

    Built in a sibling temp dir and moved in at the end (as `generate_llama`): a reader never
    sees a half-written adapter. Existing files of the same names in `out_dir` are replaced.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if not target_modules:
        raise ValueError("target_modules must not be empty")
    base = Path(base_dir).expanduser().resolve()
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{base} holds no HF checkpoint (config.json missing)")
    alpha = 2 * rank if alpha is None else alpha
    out = Path(out_dir).expanduser().resolve()
    with built_beside(out) as tmp:
        _write_adapter(base, tmp, seed=seed, rank=rank, alpha=alpha, target_modules=tuple(target_modules),
                       scale=scale, base_name=base_model_name or base.name)
    return out


def ensure_lora(base_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int, **kwargs) -> Path:
    """`out_dir`, generating the adapter first if it holds none yet (file-locked like `ensure_llama`).

    An existing adapter is reused as is: callers that vary rank/scale/targets use distinct dirs.
    """
    from filelock import FileLock

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}-lora.lock")):
        if not ((out / CONFIG_NAME).is_file() and (out / WEIGHTS_NAME).is_file()):
            print(f"generating LoRA adapter (seed {seed}) into {out} ...", file=sys.stderr)
            generate_lora(base_dir, out, seed=seed, **kwargs)
    return out
