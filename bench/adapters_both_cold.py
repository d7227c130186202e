"""Base and adapter both cold: what an adapter adds to the base's cold start (issue 23 target:
at most the base's cold start + 0.2 s).

Each run starts a fresh process per case, alternating, with an empty node cache, from an engine
host whose imports are done (what a replica claims from the warm pool), and times from the
request's arrival to its first token:
  base     the engine starts from the tiny model's snapshot (fetched through the node cache), then
           answers a base request;
  adapter  the same, for a request naming a cold adapter: the adapter's download into the node
           cache starts at the request's arrival (what the LLM app's router does, before it waits
           for a replica: serve_apps/llm/adapter_listing.py), while the engine starts; its first
           request then resolves the adapter (verified cached copy, base check, vLLM add_lora).
Both use the same engine args (enable_lora included: the app serves adapters either way), a
file:// store, and one streamed chat completion of 8 tokens. Serve's part of a cold start (the
replica's scheduling) is the same for both cases and left out.

    python bench/adapters_both_cold.py [--runs 3] [--workdir DIR]

Prints a table, then its JSON line last:
  {"bench":"adapters_both_cold","base_cold_ttft_s":..,"both_cold_ttft_s":..,"added_s":..,"runs":..}
(medians; added_s = both_cold - base_cold).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

ADAPTER = "alice-1"
ENGINE = {"enable_lora": True, "max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8, "enforce_eager": True}


async def _one(snapshot_url: str, store_url: str, adapter: str | None) -> dict:
    from gateway.llm_protocol import HandleRequest
    from serve_apps.llm.engine_host import EngineHost
    from serve_apps.llm.spec import AdapterSpec, EngineSpec
    from snapshots.adapters import AdapterStore, adapter_cache_root

    host = EngineHost(forkserver=False)  # imports done: a pooled host
    t0 = time.perf_counter()
    early = None
    if adapter is not None:  # the router's early fetch, at the request's arrival
        early = asyncio.get_running_loop().run_in_executor(
            None, AdapterStore(store_url).fetch, "tiny", adapter, adapter_cache_root())
    await host.start(EngineSpec(served_model_id="tiny", snapshot_url=snapshot_url, overrides=dict(ENGINE),
                                adapters=AdapterSpec(store_url=store_url, model="tiny", max_lora_rank=8,
                                                     idle_unload_s=600)))
    engine_s = time.perf_counter() - t0
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello world!"}], "max_tokens": 8,
            "temperature": 0}
    ttft = None
    async for chunk in host.generate_stream(HandleRequest("chat", body, adapter=adapter).to_wire()):
        assert "error" not in chunk, chunk
        if ttft is None:
            ttft = time.perf_counter() - t0
    if early is not None:
        await early
    host.shutdown()
    return {"ttft_s": ttft, "engine_s": engine_s}


def child(argv: list[str]) -> None:
    snapshot_url, store_url, adapter = argv[0], argv[1], (argv[2] or None)
    print("RESULT " + json.dumps(asyncio.run(_one(snapshot_url, store_url, adapter))), flush=True)


def _run_case(snapshot_url: str, store_url: str, adapter: str | None, work: Path) -> dict:
    from snapshots.cache import CACHE_DIR_ENV

    cache = tempfile.mkdtemp(prefix="cache-", dir=work)  # an empty node cache per run
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), CACHE_DIR_ENV: cache, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_CI_ENV": "1",
           "VLLM_CACHE_ROOT": str(work / "vllm-cache")}
    out = subprocess.run([sys.executable, __file__, "--child", snapshot_url, store_url, adapter or ""], env=env,
                         capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"case {adapter or 'base'} failed:\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def _prepare(work: Path) -> tuple[str, str]:
    """The tiny model's engine snapshot and one adapter pushed next to it (reused across runs)."""
    from bench.cold_start_apps import make_snapshot
    from snapshots.adapters import AdapterExists, AdapterStore

    hf, snapshot_url = make_snapshot(work)
    store_url = snapshot_url.rsplit("/", 2)[0]
    lora = work / "lora-1"
    if not (lora / "adapter_model.safetensors").exists():
        code = "import sys; from cluster.models.tinylora import generate_lora; generate_lora(sys.argv[1], sys.argv[2], seed=1)"
        subprocess.run([sys.executable, "-c", code, str(hf), str(lora)], check=True, cwd=REPO_ROOT,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=600)
    try:
        AdapterStore(store_url).push(lora, model="tiny", name=ADAPTER)
    except AdapterExists:
        pass
    return snapshot_url, store_url


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="Cold starts per case (alternating base, adapter).")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/thawline-bench-both-cold"))
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    snapshot_url, store_url = _prepare(a.workdir)
    base, both = [], []
    for i in range(a.runs):
        base.append(_run_case(snapshot_url, store_url, None, a.workdir))
        both.append(_run_case(snapshot_url, store_url, ADAPTER, a.workdir))
        print(f"run {i + 1}: base {base[-1]['ttft_s']:.3f} s, base+adapter {both[-1]['ttft_s']:.3f} s", flush=True)
    b = statistics.median(r["ttft_s"] for r in base)
    c = statistics.median(r["ttft_s"] for r in both)
    print(f"\n{'case':<26}{'TTFT median (s)':>16}{'engine start (s)':>18}")
    print(f"{'base cold':<26}{b:>16.3f}{statistics.median(r['engine_s'] for r in base):>18.3f}")
    print(f"{'base + adapter cold':<26}{c:>16.3f}{statistics.median(r['engine_s'] for r in both):>18.3f}")
    print(f"added by the adapter: {c - b:+.3f} s (target <= 0.2 s)")
    print(json.dumps({"bench": "adapters_both_cold", "base_cold_ttft_s": round(b, 3), "both_cold_ttft_s": round(c, 3),
                      "added_s": round(c - b, 3), "runs": a.runs}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        sys.exit(main())
