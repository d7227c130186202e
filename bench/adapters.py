"""Adapters: cold-load latency of LoRA adapters on a warm base, Thawline vs Ray Serve LLM (issue 23).

1,000 adapters of the tiny Llama are pushed to the store (`thawline adapter push`'s
AdapterStore.push); 100 of them ("active", a fixed seed) get Zipf(s=1.1) traffic on a warm base.
Each side runs in its own process (bench/adapters_sides.py), one after the other:
  thawline  EngineHost (serve_apps/llm/engine_host.py) restoring the tiny model's engine snapshot,
            EngineSpec.adapters = the store holding the 1,000 adapters: on the moto S3 server
            (127.0.0.1, the same server and bytes the baseline reads: the headline), and, with
            --thawline-store both (the default), also a file:// store;
  baseline  Ray Serve LLM's multiplexed LoRA: build_openai_app with LLMConfig.lora_config
            (dynamic_lora_loading_path = s3://<bucket>/ray-lora on the same moto server,
            max_num_adapters_per_replica = max_cpu_loras), requests "model": "tiny:<adapter>";
            `--baseline vllm` instead: vLLM's own dynamic loading (load_lora_adapter from the
            local adapter dir, then the request; no store, no download).
Both: the same engine args (float32, max_model_len 256, enforce_eager, enable_lora, max_loras,
max_cpu_loras, max_lora_rank), OMP_NUM_THREADS=1 (what Ray gives the baseline's replica), the same plan: warm-up, then every request on the base (base
throughput), then the Zipf plan on the adapters, streamed chat completions of --max-tokens tokens
(ignore_eos) at --concurrency. A request is "cold" when it is its adapter's first (the serving
layer had not loaded it: checked against the engine host's loaded set on the thawline side);
cold load = its TTFT minus the run's warm TTFT (median TTFT of requests whose adapter was
loaded already). p50 / p99 over the cold requests of all runs.
Also timed: AdapterStore.names() over the 1,000 stored adapters (the router's periodic listing)
and a set lookup of one name (the per-request routing check).

    python bench/adapters.py [--runs 3] [--requests 200] [--adapters 1000] [--active 100]
                             [--concurrency 2] [--max-tokens 8] [--quick] [--workdir DIR]

Prints a table, then its JSON line last:
  {"bench":"adapters","adapters":..,"active":..,"adapter_cold_p50_ms":..,"adapter_cold_p99_ms":..,
   "baseline_adapter_cold_p50_ms":..,"speedup":..,"tokens_per_s":..,"base_tokens_per_s":..,"runs":..,
   "baseline_kind":..,"thawline_store":..,"names_ms":..,"lookup_us":..,"file_store":{..}}
`speedup` = baseline cold p50 / thawline cold p50; tokens_per_s / base_tokens_per_s: thawline's
output tokens/s on the adapter traffic / on the same traffic on the base.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.adapters_data import (  # noqa: E402
    MODEL, PREFIX, bench_json, make_adapters, push_all, side_summary, upload_to_s3, zipf_plan,
)

BUCKET = "thawline-bench-adapters"
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1"}
RAY_LORA_CACHE = Path("/tmp/ray/llm/lora/cache")  # LoraModelLoader's default lora_root (ray 2.60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--runs", type=int, default=3,
                   help="Runs per side, alternating the sides (each a fresh process and empty caches); about "
                        "2.5 min per run on 2 cores.")
    p.add_argument("--requests", type=int, default=200, help="Requests in the Zipf plan (and in the base phase).")
    p.add_argument("--adapters", type=int, default=1000, help="Adapters pushed to the store.")
    p.add_argument("--active", type=int, default=100, help="Adapters the traffic is spread over (Zipf).")
    p.add_argument("--zipf-s", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-loras", type=int, default=4)
    p.add_argument("--max-cpu-loras", type=int, default=16)
    p.add_argument("--max-lora-rank", type=int, default=8)
    p.add_argument("--baseline", choices=["ray", "vllm"], default="ray",
                   help="ray: Ray Serve LLM multiplexed LoRA (default); vllm: vLLM's own load_lora_adapter.")
    p.add_argument("--thawline-store", choices=["s3", "file", "both"], default="both",
                   help="Where thawline's adapters are read from: the moto S3 store the baseline reads too "
                        "(the headline), a file:// store, or both (default).")
    p.add_argument("--no-baseline", action="store_true", help="Thawline side(s) only (a debugging aid).")
    p.add_argument("--side-timeout-s", type=float, default=900.0, help="Bound on one side's process.")
    p.add_argument("--quick", action="store_true", help="Smoke run: 40 requests over 20 active adapters, 1 run.")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/thawline-bench-adapters"))
    a = p.parse_args()
    if a.quick:
        a.requests, a.active, a.runs = min(a.requests, 40), min(a.active, 20), 1
    os.environ.update(ENV)
    t_start = time.monotonic()
    a.workdir.mkdir(parents=True, exist_ok=True)

    from bench.cold_start_apps import make_snapshot

    print("tiny model and its TP=1 engine snapshot ...", flush=True)
    hf, snap = make_snapshot(a.workdir, 1)
    file_store = (a.workdir / "snapshots").as_uri()
    print(f"{a.adapters} adapters (1 from peft, the rest derived) ...", flush=True)
    dirs = make_adapters(hf, a.workdir / "adapters", a.adapters)
    pushed, push_s = push_all(file_store, dirs)
    print(f"pushed {pushed} to {file_store} in {push_s:.1f} s", flush=True)
    plan = zipf_plan(a.adapters, a.active, a.requests, s=a.zipf_s, seed=a.seed)
    distinct = len({r["adapter"] for r in plan["requests"]})
    print(f"plan: {a.requests} requests over {a.active} active adapters, {distinct} distinct used", flush=True)

    from testkit.moto_s3 import moto_s3_server

    stores = {"s3": f"s3://{BUCKET}", "file": file_store}
    order = ["s3", "file"] if a.thawline_store == "both" else [a.thawline_store]
    results: dict[str, list[dict]] = {f"thawline-{s}": [] for s in order}
    if not a.no_baseline:
        results["baseline"] = []
    failures: list[str] = []
    with moto_s3_server() as endpoint:
        n_files, up_s = upload_to_s3(endpoint, f"s3://{BUCKET}", a.workdir / "snapshots", dirs)
        print(f"copied {n_files} files to the moto bucket (both layouts) in {up_s:.1f} s", flush=True)
        listing = time_listing(stores, a.adapters)
        print(f"AdapterStore.names() over {listing['listed']}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in listing["names_ms"].items())
              + f"; set lookup {listing['lookup_us']:.3f} us", flush=True)
        common = {"snapshot_url": snap, "hf_dir": str(hf), "bucket": f"s3://{BUCKET}", "adapters_dir": str(a.workdir / "adapters"),
                  "max_loras": a.max_loras, "max_cpu_loras": a.max_cpu_loras, "max_lora_rank": a.max_lora_rank,
                  "max_tokens": a.max_tokens, "concurrency": a.concurrency, "plan": plan}
        for i in range(a.runs):  # alternate the sides, so drift on a shared machine hits both
            for key in results:
                cfg = dict(common, side="ray" if key == "baseline" and a.baseline == "ray" else
                           "vllm" if key == "baseline" else "thawline")
                if key.startswith("thawline-"):
                    cfg["store_url"] = stores[key.split("-", 1)[1]]
                res = run_side(key, cfg, a.workdir, i, a.side_timeout_s)
                if "failed" in res:
                    failures.append(f"{key} run {i + 1}: {res['failed']}")
                    print(f"run {i + 1}: {key} FAILED: {res['failed'][:2000]}", flush=True)
                    continue
                results[key].append(res)
                print(f"run {i + 1}: {key:15s} " + _brief(res), flush=True)
    report(a, results, listing, failures, distinct, time.monotonic() - t_start)
    return 0 if not failures else 1


def time_listing(stores: dict[str, str], n: int) -> dict:
    """Median of 5 AdapterStore.names() per store (a fresh store object: no warm listing cache),
    and the per-request check: one name looked up in the listed set."""
    from snapshots.adapters import AdapterStore

    out = {"names_ms": {}}
    names: list[str] = []
    for key, url in stores.items():
        store = AdapterStore(url)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            names = store.names(MODEL)
            times.append((time.perf_counter() - t) * 1000)
        if len(names) < n:
            raise SystemExit(f"{url}: names() listed {len(names)} adapters, expected at least {n}")
        out["names_ms"][key] = statistics.median(times)
        out["listed"] = len(names)
    listed = set(names)
    probe = names[len(names) // 2]
    k = 100_000
    out["lookup_us"] = timeit.timeit(lambda: probe in listed, number=k) / k * 1e6
    return out


def run_side(key: str, cfg: dict, work: Path, i: int, timeout_s: float) -> dict:
    """One side in a fresh process with empty caches; its RESULT dict ({"failed": why} on failure).
    Its own session and, for Ray, a sandbox token: everything it started is stopped afterwards,
    and nothing else."""
    from snapshots.cache import CACHE_DIR_ENV
    from testkit.sandbox import MARKER_ENV, stop_sandbox

    cache = work / "node-cache" / f"{key}-{i}"
    shutil.rmtree(cache, ignore_errors=True)
    _clear_ray_lora_cache()
    token = f"adapters-bench-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO_ROOT), CACHE_DIR_ENV: str(cache),
           "VLLM_CACHE_ROOT": str(work / "vllm-cache"), MARKER_ENV: token}
    if cfg["side"] != "ray":
        # The engine's torch/OpenMP threads as Ray gives them to the baseline's replica (and to a
        # Thawline replica or warm-pool host, both Ray workers): ray/_private/utils.py
        # set_omp_num_threads_if_unset sets OMP_NUM_THREADS = floor(assigned CPUs), at least 1;
        # 1 for the baseline's LLMServer here. Outside Ray the EngineCore would spin one OpenMP
        # thread per core, on a 2-core machine that also runs the moto server and the client.
        env.setdefault("OMP_NUM_THREADS", "1")
    cfg_file = Path(tempfile.mkstemp(prefix=f"adapters-{key}-", suffix=".json", dir=work)[1])
    cfg_file.write_text(json.dumps(cfg))
    log = work / f"{key}-run{i + 1}.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "bench" / "adapters_sides.py"), str(cfg_file)],
                                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its EngineCore / forkserver, if left
            except ProcessLookupError:
                pass
            proc.wait()
            stop_sandbox(token)  # Ray's processes carry the token
            cfg_file.unlink(missing_ok=True)
            _clear_ray_lora_cache()
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("RESULT ")]
    if not lines:
        tail = log.read_text(errors="replace")[-1500:]
        return {"failed": f"no result after {time.monotonic() - t0:.0f} s (timeout {timeout_s:.0f} s); log {log}: {tail}"}
    res = json.loads(lines[-1][len("RESULT "):])
    (work / f"{key}-run{i + 1}.json").write_text(json.dumps(res))
    return res


def _clear_ray_lora_cache() -> None:
    """Only this bench's adapters (and their .lock files) in Ray's shared LoRA cache dir."""
    for d in RAY_LORA_CACHE.glob(f"{PREFIX}-*"):
        shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)


def _brief(r: dict) -> str:
    cold = sorted(r["cold_load_ms"])
    return (f"start {r['start_s']:.0f} s; cold {len(cold)} (load p50 {statistics.median(cold):.0f} ms), warm TTFT "
            f"{r['warm_ttft_ms']:.0f} ms (n {r['warm_n']}), base TTFT {r['base_ttft_ms']:.0f} ms; "
            f"{r['tokens_per_s']:.1f} tok/s vs base {r['base_tokens_per_s']:.1f}; load avg {r.get('loadavg')}; errors {r['errors']}"
            + (f" {[e[-300:] for e in r['first_errors']]}" if r["errors"] else "")
            + (f"; server {r['server']}" if r.get("server") else "")
            + (f"; MISFLAGGED {r['cold_misflagged']}" if r.get("cold_misflagged") else ""))


def report(a, results: dict[str, list[dict]], listing: dict, failures: list[str], distinct: int, wall_s: float) -> None:
    sums = {k: side_summary(v) if v else None for k, v in results.items()}
    base_name = "Ray Serve LLM multiplexed LoRA" if a.baseline == "ray" else "vLLM load_lora_adapter (local dir)"
    print()
    print(f"adapters: {listing['listed']} stored, {a.active} active, Zipf s={a.zipf_s} seed {a.seed}, {a.requests} requests "
          f"({distinct} distinct adapters), concurrency {a.concurrency}, {a.max_tokens} tokens each; max_loras "
          f"{a.max_loras}, max_cpu_loras {a.max_cpu_loras}, max_lora_rank {a.max_lora_rank}; runs {a.runs}")
    cols = list(sums)
    heads = {"baseline": f"baseline ({a.baseline})", "thawline-s3": "thawline (s3)", "thawline-file": "thawline (file)"}
    rows = [("cold load p50 (ms)", "cold_p50_ms"), ("cold load p99 (ms)", "cold_p99_ms"), ("cold requests", "cold_n"),
            ("cold TTFT p50 (ms)", "cold_ttft_p50_ms"), ("warm-adapter TTFT (ms)", "warm_ttft_ms"),
            ("base TTFT (ms)", "base_ttft_ms"), ("adapter traffic tok/s", "tokens_per_s"),
            ("same traffic on base tok/s", "base_tokens_per_s"), ("errors", "errors")]
    print(f"{'':28s}" + "".join(f"{heads[c]:>18s}" for c in cols))
    for label, field in rows:
        print(f"{label:28s}" + "".join(f"{_fmt(sums[c][field] if sums[c] else None):>18s}" for c in cols))
    print(f"{'tok/s adapters / base':28s}" + "".join(
        f"{_fmt(_ratio(sums[c]['tokens_per_s'], sums[c]['base_tokens_per_s']) if sums[c] else None):>18s}" for c in cols))
    for c in cols:
        srv = [r.get("server") for r in results[c] if r.get("server")]
        if srv:
            print(f"{heads[c]} server side per run: {srv}")
    print("listing and routing with the adapters stored: AdapterStore.names() "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in listing["names_ms"].items())
          + f" (the router's periodic refresh, not per request); per-request set lookup {listing['lookup_us']:.3f} us")
    print(f"baseline: {base_name}; wall time {wall_s:.0f} s")
    for f in failures:
        print(f"FAILED: {f[:500]}")
    thaw = sums.get("thawline-s3") or sums.get("thawline-file")
    empty = {"cold_p50_ms": None, "cold_p99_ms": None, "tokens_per_s": None, "base_tokens_per_s": None}
    store = "s3" if sums.get("thawline-s3") else "file"
    extra = {"baseline_kind": a.baseline, "thawline_store": store, "names_ms": round(listing["names_ms"][store], 2),
             "lookup_us": round(listing["lookup_us"], 4),
             "concurrency": a.concurrency, "requests": a.requests}
    if sums.get("thawline-file") and sums.get("thawline-s3"):
        extra["file_store"] = {"adapter_cold_p50_ms": sums["thawline-file"]["cold_p50_ms"],
                               "adapter_cold_p99_ms": sums["thawline-file"]["cold_p99_ms"],
                               "names_ms": round(listing["names_ms"]["file"], 2)}
    print(json.dumps(bench_json(adapters=listing["listed"], active=a.active, thawline=thaw or empty,
                                baseline=sums.get("baseline") or empty, runs=a.runs, **extra)), flush=True)


def _ratio(x, y):
    return round(x / y, 2) if x is not None and y else None


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
