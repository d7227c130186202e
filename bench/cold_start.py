"""Cold start: time to first token of the first request after an LLM app scaled to zero.

Same tiny model, same machine, same Ray session:
  (a) baseline: Ray Serve LLM `build_openai_app` on the HF dir, min_replicas 0;
  (b) thawline: `serve_apps.llm:app` restoring the model's engine snapshot, min_replicas 0,
      with its per-node warm pool of pre-imported engine hosts.
Cold starts alternate a, b, a, b... so load drift on a noisy machine hits both alike. For each
app: wait until it is at zero replicas, send one streamed completion, time the first token.
Median of --runs cold starts each; warm TTFT = the request right after a cold one.

    python bench/cold_start.py [--runs 3] [--workdir /tmp/thawline-bench-cold]

Prints a table, then the JSON line last:
  {"bench":"cold_start","baseline_ttft_s":..,"thawline_ttft_s":..,"speedup":..,"warm_ttft_s":..,"breakdown":{..}}
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

ENGINE = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}
IDLE_S = 2.0
APP_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def make_snapshot(work: Path) -> tuple[Path, str]:
    """The tiny HF dir and its TP=1 engine snapshot (made in a child process: vLLM state is global)."""
    from snapshots.errors import SnapshotNotFound
    from snapshots.store import SnapshotStore
    from testkit.tinyllama import generate_llama

    hf = generate_llama(work / "models" / "tiny", preset="tiny", seed=0)
    store = (work / "snapshots").as_uri()
    try:  # made by an earlier run with the same workdir: the model is deterministic (seed 0)
        return hf, SnapshotStore(store).resolve("tiny/latest").url
    except SnapshotNotFound:
        pass
    code = ("import json,sys; from snapshots.vllm.capture import create_engine_snapshot; "
            "print('URL ' + create_engine_snapshot(sys.argv[1], tp=1, store_url=sys.argv[2], name='tiny', "
            f"**{ENGINE!r}))")
    env = {**os.environ, **APP_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(REPO_ROOT),
           "VLLM_CACHE_ROOT": str(work / "vllm-cache")}
    out = subprocess.run([sys.executable, "-c", code, str(hf), store], env=env, capture_output=True, text=True,
                         timeout=900, cwd=REPO_ROOT)
    urls = [line[4:] for line in out.stdout.splitlines() if line.startswith("URL ")]
    if not urls:
        raise SystemExit(f"snapshot create failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return hf, urls[0]


def baseline_app(hf: Path):
    from ray.serve.llm import LLMConfig, build_openai_app

    cfg = LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(hf)},
        placement_group_config={"bundles": [{"CPU": 1}]},
        deployment_config={"autoscaling_config": {
            "min_replicas": 0, "max_replicas": 1, "initial_replicas": 0, "downscale_delay_s": IDLE_S,
            "upscale_delay_s": 0, "look_back_period_s": 1, "metrics_interval_s": 0.25}},
        engine_kwargs=dict(ENGINE),
        runtime_env={"env_vars": APP_ENV},
    )
    return build_openai_app({"llm_configs": [cfg]})


def thawline_app(snapshot_url: str):
    from serve_apps.llm import build_app
    from serve_apps.llm.args import LLMAppArgs

    cfg = LLMAppArgs(served_model_id="tiny", snapshot_url=snapshot_url, warm_pool_size=1,
                     cold_start_max_wait_s=600, engine_overrides={"enforce_eager": True},
                     autoscaling={"downscale_delay_s": IDLE_S, "look_back_period_s": 1})
    return build_app(cfg)


def deployment_replicas(app: str) -> int:
    """Replicas of the app's engine deployment (thawline: LLMServer; baseline: LLMServer:<model>).
    The ingresses are not counted: thawline's router is always on, and the baseline's ingress,
    once up, stays up for its long default downscale delay."""
    from ray import serve

    st = serve.status().applications.get(app)
    if st is None:
        return -1
    return sum(sum(n for s, n in d.replica_states.items())
               for name, d in st.deployments.items() if name.startswith("LLMServer"))


def ttft(url: str) -> float:
    """Seconds from sending a streamed completion to its first content chunk."""
    import httpx

    t0 = time.perf_counter()
    with httpx.stream("POST", url, timeout=900, json={"model": "tiny", "prompt": "Hello world!", "max_tokens": 4,
                                                     "temperature": 0, "stream": True}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.read()[:500]!r}")
        first = None
        for line in r.iter_lines():  # read to the end: the request completes normally
            if first is None and line.startswith("data:") and '"text"' in line:
                first = time.perf_counter() - t0
        if first is not None:
            return first
    raise RuntimeError(f"{url}: stream ended without a token")


def wait_zero(app: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if deployment_replicas(app) == 0:
            return
        time.sleep(0.25)
    raise RuntimeError(f"{app} did not scale to zero within {timeout}s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/thawline-bench-cold"))
    p.add_argument("--pool-settle-s", type=float, default=120.0,
                   help="Max wait for the warm pool's host to finish importing before each thawline run.")
    p.add_argument("--fresh", action="store_true", help="Remake the model and snapshot in --workdir.")
    a = p.parse_args()
    if a.fresh:
        shutil.rmtree(a.workdir, ignore_errors=True)
    # Each run starts with an empty node cache and Ray dir; the snapshot itself may be reused.
    shutil.rmtree(a.workdir / "cache", ignore_errors=True)
    shutil.rmtree(a.workdir / "ray", ignore_errors=True)
    a.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("THAWLINE_CACHE_DIR", str(a.workdir / "cache"))
    print("making the tiny model's engine snapshot ...", flush=True)
    hf, snap = make_snapshot(a.workdir)

    import logging

    import ray
    from ray import serve

    from testkit.serve_deploy import RAY_ENV

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the table
    from testkit.net import free_port

    os.environ.update(RAY_ENV)
    port = free_port()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(a.workdir / "ray"))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(baseline_app(hf), name="baseline", route_prefix="/baseline", blocking=False)
        serve.run(thawline_app(snap), name="thawline", route_prefix="/thawline", blocking=False)
        urls = {"baseline": f"http://127.0.0.1:{port}/baseline/v1/completions",
                "thawline": f"http://127.0.0.1:{port}/thawline/v1/completions"}
        pool = None
        cold: dict[str, list[float]] = {"baseline": [], "thawline": []}
        warm: list[float] = []
        breakdowns: list[dict] = []
        for i in range(a.runs):
            for app in ("baseline", "thawline"):
                # Both apps at zero, not just the measured one: the other app's replica shutting
                # down (vLLM teardown) would otherwise share the CPUs with this cold start.
                wait_zero("baseline")
                wait_zero("thawline")
                # Before either app's cold start: no warm-pool import running in the background
                # (it refills after a claim), so neither measurement shares the CPUs with it.
                pool = _settle_pool(a.pool_settle_s)
                t = ttft(urls[app])
                cold[app].append(t)
                if app == "thawline":
                    warm.append(ttft(urls[app]))
                    breakdowns.append(_last_cold_start(port))
                print(f"run {i + 1}: {app:9s} cold TTFT {t:6.2f} s", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    base, thaw = statistics.median(cold["baseline"]), statistics.median(cold["thawline"])
    phases = sorted({k for b in breakdowns for k in b.get("phases_s", {})})
    breakdown = {k: round(statistics.median(b["phases_s"].get(k, 0.0) for b in breakdowns), 3) for k in phases}
    details = sorted({k for b in breakdowns for k in b.get("engine_init_detail_s", {})})
    for k in details:  # engine_init split: vLLM config / AsyncLLM start / OpenAI serving state
        breakdown[f"engine_init.{k}"] = round(statistics.median(b.get("engine_init_detail_s", {}).get(k, 0.0)
                                                                for b in breakdowns), 3)
    print()
    print(f"{'app':10s} {'cold TTFT runs (s)':40s} {'median':>8s}")
    for app in ("baseline", "thawline"):
        print(f"{app:10s} {', '.join(f'{x:.2f}' for x in cold[app]):40s} {statistics.median(cold[app]):8.2f}")
    print(f"thawline warm TTFT median {statistics.median(warm):.3f} s; hosts: "
          f"{[b.get('host') for b in breakdowns]}; pool {pool}")
    print("thawline cold-start phases (median s): " + ", ".join(f"{k}={v}" for k, v in breakdown.items()))
    print(json.dumps({"bench": "cold_start", "baseline_ttft_s": round(base, 3), "thawline_ttft_s": round(thaw, 3),
                      "speedup": round(base / thaw, 2), "warm_ttft_s": round(statistics.median(warm), 3),
                      "breakdown": breakdown, "runs": a.runs}))
    return 0


def _settle_pool(max_wait_s: float) -> dict | None:
    """Let the node's warm-pool host finish importing (it refills after each claim), as it would
    on an idle node between cold starts. Bounded: a pool that never fills shows in `host`."""
    import ray

    from gateway.names import NAMESPACE, warm_pool_name

    deadline = time.monotonic() + max_wait_s
    stats = None
    while time.monotonic() < deadline:
        try:
            pool = ray.get_actor(warm_pool_name(ray.get_runtime_context().get_node_id()), namespace=NAMESPACE)
            stats = ray.get(pool.stats.remote())
            if stats["ready"] >= 1:
                return stats
        except ValueError:
            pass
        time.sleep(0.5)
    return stats


def _last_cold_start(port: int) -> dict:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/thawline/thawline/state", timeout=30).json()["last_cold_start"] or {}


if __name__ == "__main__":
    sys.exit(main())
