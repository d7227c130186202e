"""Base-model rows in a mixed LoRA batch on CPU: give them no adapter, not the last one.

vLLM 0.32's CPU LoRA ops (vllm/lora/ops/torch_ops/lora_ops.py, used by PunicaWrapperCPU) select
each token's adapter weights with `weights[lora_indices]`, and a token of a request without an
adapter has index -1, which Python indexing turns into the LAST adapter slot. So once every slot
holds an adapter, a base-model request batched with adapter requests silently gets an adapter
applied (wrong tokens, no error); all-base batches are fine. Found by the adapter probe
(tests/e2e/test_cpu_lora_batches.py checks it).

The fix wraps the three bgmv ops (the sgmv ones call them): rows with index -1 get zero input,
so their LoRA contribution is exactly zero, and the index is clamped to a valid slot. Applied by
the vLLM plugin (plugin.py) in every vLLM process, on CPU only; idempotent.
"""
from __future__ import annotations

import functools

_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def _no_adapter_is_zero(op):
    @functools.wraps(op)
    def wrapped(inputs, weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        idx = lora_indices_tensor
        if idx.dim() == 1 and idx.shape[0] == inputs.shape[0]:
            none = idx < 0
            if bool(none.any()):
                inputs = inputs.masked_fill(none.unsqueeze(-1), 0)
                idx = idx.clamp(min=0)
        return op(inputs, weights, output_tensor, idx, *args, **kwargs)

    wrapped.thawline_fixed = True
    return wrapped


def apply() -> bool:
    """Patch the ops where PunicaWrapperCPU and the sgmv ops look them up; False when not on CPU."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name in _OPS:
        op = getattr(lora_ops, name)
        if not getattr(op, "thawline_fixed", False):
            op = _no_adapter_is_zero(op)
            setattr(lora_ops, name, op)
        setattr(punica_cpu, name, op)
    return True
