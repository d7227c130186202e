"""Tensors <-> raw bytes without copies: the one place that knows torch dtypes by name."""
from __future__ import annotations

import numpy as np


def as_bytes(tensor) -> tuple[memoryview, str, tuple[int, ...]]:
    """(bytes view, dtype name, shape) of a torch tensor or numpy array.

    torch: detached, moved to CPU if needed, made contiguous (a copy only when it is not already);
    the dtype name is torch's without the "torch." prefix (bfloat16 has no numpy equivalent, so
    bytes are taken through a uint8 view, never through numpy's dtype system).
    """
    if isinstance(tensor, np.ndarray):
        arr = np.ascontiguousarray(tensor)
        return memoryview(arr.reshape(-1).view(np.uint8)), str(arr.dtype), tuple(arr.shape)
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    shape = tuple(t.shape)
    dtype = str(t.dtype).removeprefix("torch.")
    flat = t.reshape(-1)
    raw = flat.view(torch.uint8) if flat.element_size() != 1 or flat.dtype != torch.uint8 else flat
    return memoryview(raw.numpy()), dtype, shape


def torch_dtype(name: str):
    import torch

    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown tensor dtype {name!r} in manifest")
    return dt
