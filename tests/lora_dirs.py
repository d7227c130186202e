"""Hand-made PEFT LoRA adapter dirs for the adapter tests (no peft, no torch): the files PEFT's
save_pretrained writes, adapter_config.json and adapter_model.safetensors, for the tiny Llama
(hidden 128, 2 layers; q/k/v/o projections of 4 heads x 32 and 2 kv heads x 32)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

# (in_features, out_features) of the tiny Llama's projections, as functions of the hidden size
_SHAPES = {"q_proj": lambda h: (h, h), "k_proj": lambda h: (h, h // 2), "v_proj": lambda h: (h, h // 2),
           "o_proj": lambda h: (h, h), "gate_proj": lambda h: (h, 2 * h), "up_proj": lambda h: (h, 2 * h),
           "down_proj": lambda h: (2 * h, h)}
_KIND = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
         "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def lora_tensors(*, hidden: int = 128, rank: int = 4, targets=("q_proj", "v_proj"), layers: int = 2,
                 seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(layers):
        for m in targets:
            fan_in, fan_out = _SHAPES[m](hidden)
            key = f"base_model.model.model.layers.{layer}.{_KIND[m]}.{m}"
            out[f"{key}.lora_A.weight"] = rng.standard_normal((rank, fan_in), dtype=np.float32)
            out[f"{key}.lora_B.weight"] = rng.standard_normal((fan_out, rank), dtype=np.float32)
    return out


def make_lora_dir(path, *, hidden: int = 128, rank: int = 4, alpha: float = 8, targets=("q_proj", "v_proj"),
                  peft_type: str = "LORA", base: str = "tiny", layers: int = 2, seed: int = 0,
                  config_extra: dict | None = None) -> Path:
    """A PEFT LoRA adapter dir at `path` (created); returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": peft_type, "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
              "lora_dropout": 0.0, "bias": "none", "target_modules": list(targets),
              "base_model_name_or_path": base, **(config_extra or {})}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(lora_tensors(hidden=hidden, rank=rank, targets=targets, layers=layers, seed=seed),
              str(path / "adapter_model.safetensors"))
    return path
