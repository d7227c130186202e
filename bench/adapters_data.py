"""bench/adapters.py's data: 1,000 distinct LoRA adapters for the tiny Llama, the stores they are
pushed to, the Zipf traffic over them, and the percentile / summary helpers.

Adapters: one is generated with peft (cluster/models/tinylora.generate_lora, seed 0; about 12 s),
the rest are derived from it with numpy: for adapter i every tensor is redrawn uniform with the
template tensor's own standard deviation, seeded by (i, crc32(tensor name)), and written in the
same PEFT layout (same adapter_config.json, same safetensors names, shapes, dtype and metadata).
Loading peft 1,000 times would take hours on 2 cores; this takes seconds and gives 1,000
distinct adapters of one shape.

Nothing here imports vLLM or Ray; the pure helpers (zipf_plan, pct, summarize) are unit-tested.
"""
from __future__ import annotations

import math
import os
import shutil
import statistics
import time
import zlib
from pathlib import Path

PREFIX = "tlb23"  # adapter names: tlb23-0000 ... (unique enough for Ray's shared /tmp/ray/llm/lora/cache)
MODEL = "tiny"  # the base's model name in the stores, and the served model id on both sides
RAY_LORA_DIR = "ray-lora"  # the baseline's dynamic_lora_loading_path: s3://<bucket>/ray-lora/<name>/...
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PROMPTS = ("Hello world!", "Once upon a time", "The cluster restores", "What is the capital of France?")


def adapter_name(i: int) -> str:
    return f"{PREFIX}-{i:04d}"


# ---- adapters -----------------------------------------------------------------------------------

def make_adapters(hf_dir: Path, out_root: Path, n: int) -> list[Path]:
    """`n` adapter dirs under out_root (reused when already there): adapter 0 from peft, the rest
    derived from it (module doc)."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from cluster.models.tinylora import ensure_lora

    template = ensure_lora(hf_dir, out_root / "template", seed=0)
    with safe_open(str(template / WEIGHTS_FILE), framework="numpy") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in sorted(f.keys())}
    dirs = []
    for i in range(n):
        d = out_root / adapter_name(i)
        dirs.append(d)
        if (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file():
            continue
        tmp = out_root / f".{d.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copyfile(template / CONFIG_FILE, tmp / CONFIG_FILE)
        if i == 0:
            shutil.copyfile(template / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        else:
            out = {}
            for k, t in tensors.items():
                rng = np.random.default_rng([i, zlib.crc32(k.encode())])
                half = np.float32(math.sqrt(3.0) * float(t.std()))
                out[k] = ((rng.random(t.shape, dtype=np.float32) * 2 - 1) * half).astype(t.dtype)
            save_file(out, str(tmp / WEIGHTS_FILE), metadata=meta)
        shutil.rmtree(d, ignore_errors=True)
        os.rename(tmp, d)
    return dirs


def push_all(store_url: str, dirs: list[Path]) -> tuple[int, float]:
    """Push every adapter dir (name = dir name) to the store under MODEL; the ones already there
    are skipped (a reused workdir). Returns (pushed now, seconds)."""
    from snapshots.adapters import AdapterStore

    store = AdapterStore(store_url)
    have = set(store.names(MODEL))
    t0 = time.perf_counter()
    pushed = 0
    for d in dirs:
        if d.name not in have:
            store.push(d, model=MODEL, name=d.name)
            pushed += 1
    return pushed, time.perf_counter() - t0


def upload_to_s3(endpoint: str, bucket: str, file_store_root: Path, dirs: list[Path]) -> tuple[int, float]:
    """Copy the adapters into the moto bucket twice: Thawline's store layout (the file store's
    <model>/adapters tree, as pushed: adapter.json + the push dir) and Ray Serve LLM's
    (<bucket>/ray-lora/<name>/{adapter_config.json, adapter_model.safetensors}). The same bytes
    in both. Returns (files, seconds)."""
    from testkit.moto_s3 import make_bucket, s3fs_for

    make_bucket(endpoint, bucket)
    fs = s3fs_for(endpoint)
    src, dst = [], []
    tree = file_store_root / MODEL / "adapters"
    for p in sorted(tree.rglob("*")):
        if p.is_file():
            src.append(str(p))
            dst.append(f"{bucket}/{MODEL}/adapters/{p.relative_to(tree)}")
    for d in dirs:
        for f in (CONFIG_FILE, WEIGHTS_FILE):
            src.append(str(d / f))
            dst.append(f"{bucket}/{RAY_LORA_DIR}/{d.name}/{f}")
    t0 = time.perf_counter()
    step = 200  # s3fs sends a batch's PUTs concurrently; small files, no multipart
    for i in range(0, len(src), step):
        fs.put(src[i:i + step], dst[i:i + step])
    return len(src), time.perf_counter() - t0


# ---- traffic -------------------------------------------------------------------------------------

def zipf_plan(n_adapters: int, active: int, requests: int, *, s: float = 1.1, seed: int = 23) -> dict:
    """The request sequence both sides replay: `active` adapters drawn from the `n_adapters`
    (fixed seed), then `requests` requests, each naming one of them by Zipf(s) over their rank
    (rank 1 the most frequent) and one of PROMPTS."""
    import numpy as np

    if not 1 <= active <= n_adapters:
        raise ValueError(f"active must be in 1..{n_adapters}, got {active}")
    rng = np.random.default_rng(seed)
    chosen = [adapter_name(int(i)) for i in rng.choice(n_adapters, size=active, replace=False)]
    w = 1.0 / np.arange(1, active + 1) ** s
    ranks = rng.choice(active, size=requests, p=w / w.sum())
    prompts = rng.integers(0, len(PROMPTS), size=requests)
    return {"active": chosen, "s": s, "seed": seed,
            "requests": [{"adapter": chosen[int(r)], "prompt": PROMPTS[int(p)]} for r, p in zip(ranks, prompts)]}


# ---- numbers -------------------------------------------------------------------------------------

def pct(xs, q: float) -> float | None:
    """The q-th percentile (0-100) of xs, linear between the closest ranks (numpy's default);
    None for no samples."""
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _r(x, nd=1):
    return None if x is None else round(x, nd)


def side_summary(results: list[dict]) -> dict:
    """One side over its runs: cold-load samples pooled (ms, each cold TTFT minus its run's warm
    TTFT median), medians of the per-run TTFTs and throughputs."""
    cold = [ms for r in results for ms in r["cold_load_ms"]]
    return {"runs": len(results),
            "cold_p50_ms": _r(pct(cold, 50)), "cold_p99_ms": _r(pct(cold, 99)), "cold_n": len(cold),
            "cold_ttft_p50_ms": _r(pct([ms for r in results for ms in r["cold_ttft_ms"]], 50)),
            "warm_ttft_ms": _r(statistics.median(r["warm_ttft_ms"] for r in results)),
            "base_ttft_ms": _r(statistics.median(r["base_ttft_ms"] for r in results)),
            "tokens_per_s": _r(statistics.median(r["tokens_per_s"] for r in results)),
            "base_tokens_per_s": _r(statistics.median(r["base_tokens_per_s"] for r in results)),
            "errors": sum(r["errors"] for r in results)}


def bench_json(*, adapters: int, active: int, thawline: dict, baseline: dict, runs: int, **extra) -> dict:
    """The bench's last line (field names fixed by issue 23), extra fields after them."""
    p50, base_p50 = thawline["cold_p50_ms"], baseline["cold_p50_ms"]
    speedup = round(base_p50 / p50, 2) if p50 and base_p50 else None
    return {"bench": "adapters", "adapters": adapters, "active": active,
            "adapter_cold_p50_ms": p50, "adapter_cold_p99_ms": thawline["cold_p99_ms"],
            "baseline_adapter_cold_p50_ms": base_p50, "speedup": speedup,
            "tokens_per_s": thawline["tokens_per_s"], "base_tokens_per_s": thawline["base_tokens_per_s"],
            "runs": runs, **extra}
