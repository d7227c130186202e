"""The cold-start timeline: wall-clock marks taken along the cold path, turned into phases.

Marks (time.time(), seconds; all on one node's clock except `request`, taken in the router):
  request        the router got a request while no replica was warm
  process_start  the replica's worker process was created (process_start_time: Ray forks a
                 new worker for each replica; one started before the request was reused)
  init_start     the replica's constructor began (Serve imported the deployment module)
  imports_done   vLLM is imported (in a claimed warm-pool host: already done, ~0 s)
  restore_done   snapshot resolved, engine files materialised from the node cache, weight
                 prefetch started (the weight bytes themselves stream inside engine init)
  engine_ready   vLLM engine up, OpenAI serving state built
  first_token    the router saw the first token / the full answer of that request

Pure logic: no Ray, no vLLM.
"""
from __future__ import annotations

import json
import time

MARKS = ("request", "process_start", "init_start", "imports_done", "restore_done", "engine_ready", "first_token")
# phase name -> (from mark, to mark)
PHASES = {
    "serve_scheduling": ("request", "process_start"),
    "worker_start": ("process_start", "init_start"),
    "imports": ("init_start", "imports_done"),
    "restore": ("imports_done", "restore_done"),
    "engine_init": ("restore_done", "engine_ready"),
    "first_token": ("engine_ready", "first_token"),
}


def phases(marks: dict[str, float]) -> dict[str, float]:
    """Seconds per phase, plus `total`. A phase whose marks are missing is left out. A replica that
    was already starting before the request arrived gives negative early phases: clamp to 0."""
    out: dict[str, float] = {}
    for name, (a, b) in PHASES.items():
        if a in marks and b in marks:
            out[name] = round(max(0.0, marks[b] - marks[a]), 4)
    if "request" in marks and "first_token" in marks:
        out["total"] = round(marks["first_token"] - marks["request"], 4)
    return out


def log_line(app: str, replica_id: str, marks: dict[str, float], **extra) -> str:
    """One structured line per cold start (grep `"event": "thawline.cold_start"`)."""
    return json.dumps({"event": "thawline.cold_start", "app": app, "replica": replica_id,
                       "phases_s": phases(marks), **extra}, sort_keys=True)


def process_start_time(pid: int | str = "self") -> float:
    """time.time() at which process `pid` was created, to ~10 ms (Linux; psutil elsewhere).

    Not psutil's create_time(): it adds the start tick to /proc/stat's btime, which the kernel
    rounds down to whole seconds, so it is up to 1 s early. That can put the worker Ray forks
    shortly after a cold request *before* the request: the router then takes the worker as
    reused, and its start goes into serve_scheduling with worker_start logged as 0.
    Here: now minus the process's age, both read on the boot clock."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        import os

        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process(None if pid == "self" else int(pid)).create_time()
