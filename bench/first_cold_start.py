"""Diagnostic: is the first cold start of a Ray session slower than the later ones, and why.

Issue 13 item 4. Starts a fresh local Ray per session (own short temp dir, sandbox token, stopped
in `finally`), deploys only the Thawline LLM app (the tiny model and TP=1 file:// snapshot of
bench/cold_start.py, made by its helpers), and times cold starts 1..N of the session, each
after the LLMServer deployment is at zero and the warm pool settled (as bench/cold_start.py).
For each cold start it prints the router's phase breakdown and the Ray/Serve evidence inside
that cold start's window, as seconds after the request was sent:
- Serve controller lines (autoscaler decision, replica added/started, with PID),
- raylet lines (worker processes started, leases, runtime env),
- the replica's worker: raylet fork, core-worker log start, replica log lines,
- the LLM router's own log lines (its handle's replica updates),
- the processes that used the most CPU in the window (contention).

    python bench/first_cold_start.py [--runs 3] [--sessions 1] [--workdir /tmp/tl-first] [--out f.json]
    python bench/first_cold_start.py --baseline   # cold-start Ray Serve LLM before each one, too

Each session starts with an empty node cache (THAWLINE_CACHE_DIR) and reuses the snapshot, as
each bench/cold_start.py run does (--keep-cache keeps it). Timings only; nothing here asserts.
The JSON summary line is printed last.

What it found (2026-11-30, quiet 2-core VM): the first cold start of a session was the first
engine start from a fresh engine dir in the node cache. vLLM's model-info cache
(VLLM_CACHE_ROOT/modelinfos) missed there, and vLLM inspected the model class in a subprocess
that imported vLLM again: engine_init.config 7.4-7.9 s, TTFT 11.4-12.2 s against 3.8-4.5 s later.
serve_apps/llm/model_info.py runs that inspection in the preloaded forkserver (config 0.08 s).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.cold_start_apps import baseline_app, make_snapshot, thawline_app  # noqa: E402
from bench.cold_start_cluster import last_cold_start, settle_pools, ttft, wait_zero  # noqa: E402
from gateway.cold_start_phases import ENGINE_START_WITH_WEIGHTS, SERVE_SCHEDULING  # noqa: E402
from snapshots.cache import CACHE_DIR_ENV  # noqa: E402

APP = "thawline"
# Controller/replica log lines ("INFO 2026-11-29 23:45:02,584 controller 6948 -- ...") and
# raylet/core-worker lines ("[2026-11-29 23:45:02,720 I 6852 6852] (raylet) ...").
_SERVE_TS = re.compile(r"^(?:INFO|WARNING|ERROR|DEBUG) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_CORE_TS = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_RAYLET_KEEP = ("Started worker process", "runtime env", "Runtime env", "placement group", "Prestart",
                "lease", "Lease", "bundle", "prestart")


def _ts(line: str) -> float | None:
    m = _SERVE_TS.match(line) or _CORE_TS.match(line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _lines(path: Path, t0: float, t1: float, keep=None) -> list[tuple[float, str]]:
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        t = _ts(line)
        if t is None or not (t0 <= t <= t1):
            continue
        if keep is None or any(k in line for k in keep):
            out.append((t, line))
    return out


def _short(line: str, n: int = 230) -> str:
    line = re.sub(r"^\S+ \d{4}-\d\d-\d\d (\S+) ", r"\1 ", line)  # serve format: keep the time only
    line = re.sub(r"^\[\d{4}-\d\d-\d\d (\S+) [IWE] \d+ \d+\] ", r"\1 ", line)
    return line if len(line) <= n else line[:n] + "..."


def evidence(logs: Path, t_req: float, t_end: float) -> dict:
    """Ray/Serve log lines between the request (minus 1 s) and the first token (plus 1 s)."""
    a, b = t_req - 1.0, t_end + 1.0
    ev: list[tuple[float, str, str]] = []
    for p in sorted((logs / "serve").glob("controller_*.log")):
        ev += [(t, "controller", ln) for t, ln in _lines(p, a, b)]
    ev += [(t, "raylet", ln) for t, ln in _lines(logs / "raylet.out", a, b, _RAYLET_KEEP)]
    for p in sorted((logs / "serve").glob(f"replica_{APP}_LLMRouter_*.log")):
        ev += [(t, "router", ln) for t, ln in _lines(p, a, b)]
    pid = None
    for _, src, ln in ev:
        m = re.search(r"Replica\(id='(\w+)', deployment='LLMServer', app='thawline'\) started successfully"
                      r".*PID: (\d+)", ln)
        if src == "controller" and m:
            pid = int(m.group(2))
            for p in (logs / "serve").glob(f"replica_{APP}_LLMServer_{m.group(1)}.log"):
                ev += [(t, "replica", ln2) for t, ln2 in _lines(p, a, b)][:8]
    forked = None
    if pid is not None:
        for t, ln in _lines(logs / "raylet.out", a - 600, b, (f"with pid {pid} ",)):
            forked = t
        for p in logs.glob(f"python-core-worker-*_{pid}.log"):
            ev += [(t, f"worker {pid}", ln) for t, ln in _lines(p, a - 600, b)][:2]
    ev = [(t, src, _actor_of(logs, ln)) for t, src, ln in ev]
    ev.sort()
    return {"replica_pid": pid, "worker_forked_in_window": forked is not None and forked >= a,
            "worker_forked_at": None if forked is None else round(forked - t_req, 3),
            "lines": [f"{t - t_req:+8.3f} {src:10s} {_short(ln)}" for t, src, ln in ev]}


def _actor_of(logs: Path, line: str) -> str:
    """A raylet "Started worker process with pid N" line, with the actor class that worker ran."""
    m = re.search(r"Started worker process with pid (\d+)", line)
    if not m:
        return line
    for p in logs.glob(f"worker-*-{m.group(1)}.out"):
        name = re.search(r":actor_name:(\w+)", p.read_text(errors="replace")[:500])
        if name:
            return f"{line} [{name.group(1)}]"
    return line


class CpuSampler:
    """Per-process CPU seconds, sampled every `every_s` in a thread: who used the CPUs when."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, dict[str, float]]] = []  # (time, label -> cpu s in the step)
        self._stop = threading.Event()
        self._prev: dict[int, tuple[str, float]] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _label(self, proc) -> str:
        cmd = proc.info.get("cmdline") or [proc.info.get("name") or "?"]
        first = cmd[0] if cmd[0].startswith("ray::") else os.path.basename(cmd[0])
        if first.startswith("python") and len(cmd) > 1:
            first = f"{first} {os.path.basename(cmd[1]) if not cmd[1].startswith('-') else ' '.join(cmd[1:3])}"
        return first[:60]

    def _step(self) -> None:
        import psutil

        now: dict[int, tuple[str, float]] = {}
        used: dict[str, float] = {}
        for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
            ct = proc.info.get("cpu_times")
            if ct is None:
                continue
            label, total = self._label(proc), ct.user + ct.system
            now[proc.pid] = (label, total)
            prev = self._prev.get(proc.pid)
            d = total - prev[1] if prev else 0.0
            if d > 0.01:
                used[label] = used.get(label, 0.0) + d
        self._prev = now
        self.samples.append((time.time(), used))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._step()

    def start(self) -> "CpuSampler":
        self._step()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def top(self, t0: float, t1: float, n: int = 6) -> dict[str, float]:
        tot: dict[str, float] = {}
        for t, used in self.samples:
            if t0 <= t <= t1 + self.every_s:
                for k, v in used.items():
                    tot[k] = tot.get(k, 0.0) + v
        return {k: round(v, 2) for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:n]}


def one_session(snap: str, runs: int, settle_s: float, sampler: CpuSampler,
                hf: Path | None = None, cache: Path | None = None, empty_cache: bool = True) -> list[dict]:
    """hf: also deploy bench/cold_start.py's Ray Serve LLM baseline on this HF dir and cold-start
    it before each Thawline cold start, in that bench's order (its session, not a quiet one).
    cache: the node cache dir; emptied first (empty_cache), as each bench/cold_start.py run does
    (the snapshot itself is kept)."""
    import ray
    from ray import serve

    from testkit.net import free_port
    from testkit.sandbox import MARKER_ENV, stop_sandbox
    from testkit.serve_deploy import RAY_ENV

    if cache is not None and empty_cache:
        shutil.rmtree(cache, ignore_errors=True)
    temp = tempfile.mkdtemp(prefix="tl-", dir="/tmp")
    token = f"first-cold-{os.getpid()}-{time.time_ns()}"
    os.environ.update(RAY_ENV)
    os.environ[MARKER_ENV] = token
    port = free_port()
    out: list[dict] = []
    try:
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
        logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        t_deploy = time.time()
        if hf is not None:
            serve.run(baseline_app(hf), name="baseline", route_prefix="/baseline", blocking=False)
        serve.run(thawline_app(snap), name=APP, route_prefix=f"/{APP}", blocking=False)
        url = f"http://127.0.0.1:{port}/{APP}/v1/completions"
        for i in range(runs):
            if hf is not None:
                wait_zero("baseline")
                wait_zero(APP)
                settle_pools(settle_s)
                base = ttft(f"http://127.0.0.1:{port}/baseline/v1/completions")
                print(f"baseline cold TTFT {base:.2f} s", flush=True)
                wait_zero("baseline")
            wait_zero(APP)
            pool = settle_pools(settle_s)
            t_req = time.time()
            cold = ttft(url)
            t_tok = t_req + cold
            warm = ttft(url)
            cs = last_cold_start(port, APP)
            time.sleep(1.5)  # let the controller/replica logs reach their files
            rec = {"session_run": i + 1, "since_deploy_s": round(t_req - t_deploy, 1), "cold_ttft_s": round(cold, 3),
                   "warm_ttft_s": round(warm, 3), "phases_s": cs.get("phases_s", {}), "host": cs.get("host"),
                   "marks_s": {k: round(v - t_req, 3) for k, v in (cs.get("marks") or {}).items()},
                   "engine_start_detail_s": cs.get("engine_start_detail_s"), "failed_starts": cs.get("failed_starts"),
                   "modelinfo_written_s": _modelinfo_writes(cache, t_req, t_tok),
                   "pool_before": pool, "cpu_s_top": sampler.top(t_req, t_tok),
                   "loadavg": [round(x, 2) for x in os.getloadavg()], **evidence(logs, t_req, t_tok)}
            out.append(rec)
            _print_run(rec)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            stop_sandbox(token)  # anything of this session's Ray that outlived shutdown (hosts, forkservers)
    return out


def _modelinfo_writes(cache: Path | None, t0: float, t1: float) -> list[float]:
    """vLLM's model-info cache files (VLLM_CACHE_ROOT/modelinfos, one per model class) written in
    the node cache's engine dirs during the cold start, in s after the request. A miss there
    makes vLLM inspect the model class in a subprocess that imports vLLM again."""
    if cache is None:
        return []
    return sorted(round(f.stat().st_mtime - t0, 3) for f in cache.glob("engines/*/*/vllm_cache/modelinfos/*")
                  if t0 - 1 <= f.stat().st_mtime <= t1 + 1)


def _print_run(rec: dict) -> None:
    ph = rec["phases_s"]
    print(f"\n=== cold start {rec['session_run']} ({rec['since_deploy_s']} s after deploy): "
          f"TTFT {rec['cold_ttft_s']} s, "
          f"warm {rec['warm_ttft_s']} s, host {rec['host']}, load {rec['loadavg']}", flush=True)
    print("phases: " + ", ".join(f"{k}={v}" for k, v in ph.items()))
    print("marks (s after the request was sent): " + ", ".join(f"{k}={v}" for k, v in rec["marks_s"].items()))
    print(f"replica pid {rec['replica_pid']}, worker forked in window: {rec['worker_forked_in_window']} "
          f"(at {rec['worker_forked_at']} s); pool before: {rec['pool_before']}")
    print(f"engine_start_with_weights detail: {rec['engine_start_detail_s']}; failed replica starts: {rec['failed_starts']}; "
          f"vLLM model-info cache written at: {rec['modelinfo_written_s']} s")
    print(f"CPU s by process during the cold start: {rec['cpu_s_top']}")
    for line in rec["lines"]:
        print("  " + line)
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="cold starts per Ray session")
    p.add_argument("--sessions", type=int, default=1, help="fresh Ray sessions, one after the other")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tl-first"))
    p.add_argument("--pool-settle-s", type=float, default=120.0)
    p.add_argument("--baseline", action="store_true",
                   help="also deploy the Ray Serve LLM baseline and cold-start it before each Thawline one")
    p.add_argument("--keep-cache", action="store_true",
                   help="keep the node cache between sessions (default: empty it, as bench/cold_start.py does)")
    p.add_argument("--out", type=Path, help="write every run's record here as JSON")
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.setdefault(CACHE_DIR_ENV, str(a.workdir / "cache")))
    print("making the tiny model's engine snapshot ...", flush=True)
    hf, snap = make_snapshot(a.workdir)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    sampler = CpuSampler().start()
    sessions = []
    try:
        for s in range(a.sessions):
            print(f"\n##### session {s + 1}", flush=True)
            sessions.append(one_session(snap, a.runs, a.pool_settle_s, sampler,
                                        hf if a.baseline else None, cache, not a.keep_cache))
    finally:
        sampler.stop()
    if a.out:
        a.out.write_text(json.dumps(sessions, indent=1))
    summary = [[r["cold_ttft_s"] for r in runs] for runs in sessions]
    sched = [[r["phases_s"].get(SERVE_SCHEDULING) for r in runs] for runs in sessions]
    init = [[r["phases_s"].get(ENGINE_START_WITH_WEIGHTS) for r in runs] for runs in sessions]
    print(json.dumps({"bench": "first_cold_start", "cold_ttft_s": summary, "serve_scheduling_s": sched,
                      "engine_init_s": init}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
