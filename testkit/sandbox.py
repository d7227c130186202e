"""Stop one local Ray cluster without touching any other Ray on the same machine.

`ray stop` kills every process on the host whose name looks like Ray's (raylet, gcs_server,
...), whoever started it. On a shared dev box or CI runner that takes down other people's
clusters. A sandboxed cluster is instead started with THAWLINE_RAY_SANDBOX=<token> in its
environment; every Ray process inherits it (raylet -> workers, monitor -> fake-node raylets),
so "stop the cluster" becomes "stop the processes carrying this token".

    python -m testkit.sandbox stop      # uses $THAWLINE_RAY_SANDBOX; a drop-in for `ray stop`
"""
from __future__ import annotations

import os
import sys

import psutil

MARKER_ENV = "THAWLINE_RAY_SANDBOX"


def _ancestors_and_self() -> set[int]:
    pids = {os.getpid()}
    proc = psutil.Process()
    for parent in proc.parents():
        pids.add(parent.pid)
    return pids


def sandbox_processes(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries MARKER_ENV=token, minus this process and its
    ancestors (the shell that runs a wrapped `ray stop` carries the token too)."""
    if not token:
        raise ValueError(f"{MARKER_ENV} token must be non-empty")
    spared = _ancestors_and_self()
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in spared:
            continue
        try:
            if proc.environ().get(MARKER_ENV) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _terminate(procs: list[psutil.Process], grace_s: float) -> None:
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def stop_sandbox(token: str, grace_s: float = 10.0) -> int:
    """SIGTERM the sandbox's processes (SIGKILL after grace_s); returns how many were found.

    Same order as `ray stop`: raylets first (their agents fate-share with them), then the
    rest, the GCS last so nothing exits complaining that it vanished.
    """
    procs = sandbox_processes(token)

    def name(proc: psutil.Process) -> str:
        try:
            return proc.name()
        except psutil.Error:
            return ""

    raylets = [p for p in procs if name(p) == "raylet"]
    gcs = [p for p in procs if name(p) == "gcs_server"]
    rest = [p for p in procs if p not in raylets and p not in gcs]
    for bucket in (raylets, rest, gcs):
        if bucket:
            _terminate(bucket, grace_s)
    return len(procs)


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] != "stop":
        print("usage: python -m testkit.sandbox stop [ray stop flags are ignored]", file=sys.stderr)
        return 2
    token = os.environ.get(MARKER_ENV, "")
    if not token:
        # Refuse rather than fall back to a machine-wide `ray stop`.
        print(f"error: {MARKER_ENV} is not set; refusing to stop anything", file=sys.stderr)
        return 1
    count = stop_sandbox(token)
    print(f"Stopped {count} processes of sandbox {token}.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
