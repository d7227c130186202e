"""Cold-start timeline marks that decide where a slow cold start's seconds are put: the replica's
process start (timeline.process_start_time) and failed replica starts (Board.failed_starts)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gateway.readiness import Board
from serve_apps.llm.timeline import process_start_time

# /proc/uptime and the start tick both have 10 ms steps.
TICKS_S = 0.03


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_process_started_after_a_request_is_not_dated_before_it():
    # psutil's create_time() is up to 1 s early (whole-second btime): a worker Ray forked after
    # the request looked reused, and its start was logged as serve_scheduling.
    t0 = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        started = process_start_time(child.pid)
        assert t0 - TICKS_S <= started <= time.time() + TICKS_S
    finally:
        child.kill()
        child.wait(timeout=10)
    assert process_start_time() <= time.time()


def test_failed_replica_starts_since_the_request_are_counted_on_the_served_cold_start():
    now = [100.0]
    b = Board(clock=lambda: now[0])
    b.report("app", "old", "starting")
    now[0] = 101.0
    b.report("app", "old", "stopped")  # failed before this request: not counted
    now[0] = 110.0
    b.report("app", "r1", "starting")
    now[0] = 112.0
    b.report("app", "r1", "stopped")  # the request's first replica failed
    b.report("app", "r2", "starting")
    now[0] = 118.0
    b.report("app", "r2", "warm")
    b.record_cold_start("app", {"replica": "r2", "phases_s": {}, "marks": {"request": 109.5}})
    assert b.last_cold_start("app")["failed_starts"] == 1
    # a warm replica that stops (scale down) is not a failed start
    now[0] = 130.0
    b.report("app", "r2", "stopped")
    b.record_cold_start("app", {"replica": "r3", "phases_s": {}, "marks": {"request": 120.0}})
    assert b.last_cold_start("app")["failed_starts"] == 0
    # a timeline without marks is stored as given
    b.record_cold_start("app", {"replica": "r4"})
    assert "failed_starts" not in b.last_cold_start("app")
