"""The cold-start timeline on the replica's side: the structured log line and the process clock.

The marks and phases themselves (names, order, marks -> seconds) are a contract the gateway, the
CLI and the demo read too: gateway/cold_start_phases.py owns them.

Pure logic: no Ray, no vLLM.
"""
from __future__ import annotations

import json
import time

from gateway.cold_start_phases import phases


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
