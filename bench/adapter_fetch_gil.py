"""Adapter fetches beside a busy request loop: the GIL switch interval's part of a cold load.

An engine host fetches an adapter (snapshots/adapters/fetch.py: adapter.json, then both files at
once, on s3fs's IO-loop thread, called from a worker thread) while its main thread processes the
engine's outputs for other requests. Every hand-off of the GIL between those threads can wait
CPython's switch interval. This bench isolates that: a moto S3 server on loopback holding
--adapters adapters; in the fetching process, a thread that keeps the CPU busy in Python (the
stand-in for the request loop) and --fetches fetches of distinct adapters into an empty node
cache. Once at CPython's default interval (5 ms, the baseline) and once at Thawline's serving
interval (serve_apps/gil.py, 0.5 ms), each in a fresh process, plus both without the busy thread.

    python bench/adapter_fetch_gil.py [--adapters 200] [--fetches 150] [--workdir DIR]

Prints a table, then its JSON line last:
  {"bench":"adapter_fetch_gil","fetch_p50_ms_default":..,"fetch_p99_ms_default":..,
   "fetch_p50_ms_serving":..,"fetch_p99_ms_serving":..,"speedup_p50":..,"idle":{..},"fetches":..}
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

MODEL = "tiny"
CPYTHON_DEFAULT_INTERVAL_S = 0.005  # sys.getswitchinterval() of a fresh interpreter


def _pcts(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"p50": round(statistics.median(s), 1), "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))], 1),
            "max": round(s[-1], 1)}


def _fetch_side(store_url: str, names: list[str], cache: str, interval_s: float, busy: bool) -> dict:
    """In this (fresh) process: fetch every name once; per-fetch milliseconds."""
    from snapshots.adapters import AdapterStore

    sys.setswitchinterval(interval_s)
    stop = threading.Event()
    if busy:
        def spin() -> None:  # pure Python, never sleeps: holds the GIL until it is forced off
            while not stop.is_set():
                sum(range(20000))
        threading.Thread(target=spin, daemon=True).start()
    store = AdapterStore(store_url)
    store.warm(MODEL)
    rng = random.Random(7)
    out = []
    for name in names:
        time.sleep(rng.uniform(0, 0.02))
        t0 = time.perf_counter()
        store.fetch(MODEL, name, cache)
        out.append((time.perf_counter() - t0) * 1000)
    stop.set()
    return {"ms": out}


def _run_side(cfg: dict) -> dict:
    """One side in a fresh process (the switch interval is process-wide)."""
    proc = subprocess.run([sys.executable, __file__, "--side", json.dumps(cfg)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"side {cfg['label']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--adapters", type=int, default=200, help="Adapters pushed to the moto store.")
    p.add_argument("--fetches", type=int, default=150, help="Fetches per side (distinct adapters, cold).")
    p.add_argument("--workdir", default=None)
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        cfg = json.loads(a.side)
        print(json.dumps(_fetch_side(cfg["store_url"], cfg["names"], cfg["cache"], cfg["interval_s"], cfg["busy"])))
        return 0
    if not 1 <= a.fetches <= a.adapters:
        p.error("--fetches must be between 1 and --adapters (each fetch is a distinct, cold adapter)")

    from bench.adapters_data import MODEL as DATA_MODEL, make_adapters, push_all
    from cluster.models.tinyllama import generate_llama
    from serve_apps.gil import GIL_SWITCH_INTERVAL_S
    from snapshots.offline import create_offline_snapshot
    from testkit.moto_s3 import make_bucket, moto_s3_server

    assert DATA_MODEL == MODEL
    work = Path(a.workdir or tempfile.mkdtemp(prefix="thawline-bench-gil-"))
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "tiny"
    if not (hf / "config.json").is_file():
        generate_llama(hf, preset="tiny")
    dirs = make_adapters(hf, work / "adapters", a.adapters)
    with moto_s3_server() as endpoint:
        store_url = make_bucket(endpoint, "thawline-bench-gil")
        create_offline_snapshot(hf, tp=1, store_url=store_url, name=MODEL)  # the base adapters are checked against
        push_all(store_url, dirs)
        names = [d.name for d in dirs]
        sides = [("default, busy loop", CPYTHON_DEFAULT_INTERVAL_S, True),
                 ("serving, busy loop", GIL_SWITCH_INTERVAL_S, True),
                 ("default, idle", CPYTHON_DEFAULT_INTERVAL_S, False),
                 ("serving, idle", GIL_SWITCH_INTERVAL_S, False)]
        results = {}
        for i, (label, interval, busy) in enumerate(sides):
            cache = work / f"cache-{i}"
            shutil.rmtree(cache, ignore_errors=True)
            chosen = random.Random(i).sample(names, a.fetches)
            res = _run_side({"label": label, "store_url": store_url, "names": chosen, "cache": str(cache),
                             "interval_s": interval, "busy": busy})
            results[label] = _pcts(res["ms"])

    print(f"{a.fetches} cold adapter fetches per side from moto S3 (127.0.0.1), {a.adapters} stored")
    print(f"{'side':<22}{'switch interval':>17}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for label, interval, _ in sides:
        r = results[label]
        print(f"{label:<22}{interval * 1000:>15.1f}ms{r['p50']:>9}{r['p99']:>9}{r['max']:>9}")
    d, s = results["default, busy loop"], results["serving, busy loop"]
    print(json.dumps({"bench": "adapter_fetch_gil", "fetch_p50_ms_default": d["p50"], "fetch_p99_ms_default": d["p99"],
                      "fetch_p50_ms_serving": s["p50"], "fetch_p99_ms_serving": s["p99"],
                      "speedup_p50": round(d["p50"] / s["p50"], 2) if s["p50"] else None,
                      "idle": {"default": results["default, idle"], "serving": results["serving, idle"]},
                      "fetches": a.fetches, "adapters": a.adapters}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
