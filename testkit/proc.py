"""Run a child process in its own session and reap its whole group: vLLM's EngineCore and TP
workers are grandchildren, and a timeout or an abnormal exit must never leave them running."""
from __future__ import annotations

import os
import signal
import subprocess


def run_in_own_session(argv: list[str], *, env: dict, cwd, timeout: float) -> tuple[int | None, str, str]:
    """(returncode, stdout, stderr); on timeout the group is killed and subprocess.TimeoutExpired
    is raised after the output collected so far is read."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise
    finally:
        _kill_group(proc.pid)
    return proc.returncode, stdout, stderr


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
