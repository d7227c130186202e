"""BreakerBoard, the shared breaker authority, as the plain class the actor is made from."""
from __future__ import annotations

from gateway.breaker import BreakerSet
from gateway.breaker_actor import BreakerBoard
from gateway.config import BreakerConfig


def test_board_merges_replicas_outcomes_and_reports_its_own_clock():
    now = [500.0]
    cfg = BreakerConfig(consecutive_failures=2, cooldown_s=30)
    board = BreakerBoard(cfg.model_dump(), clock=lambda: now[0])
    snaps, remote_now = board.sync([("t", False, 1.0)])          # replica 1: one failure
    assert snaps == {"t": {"state": "closed", "opened_at": 0.0}} and remote_now == 500.0
    now[0] = 501.0
    snaps, remote_now = board.sync([("t", False, 99.0), ("u", True, 99.0)])   # replica 2: another one
    assert snaps["t"] == {"state": "open", "opened_at": 501.0} and snaps["u"]["state"] == "closed"
    # a replica adopts it on its own clock: opened 1 s before the board's reply
    replica = BreakerSet(cfg, clock=lambda: 10.0)
    replica.adopt(snaps, local_now=10.0, remote_now=remote_now)
    assert replica.state("t") == "open" and replica.get("t").opened_at == 10.0
    now[0] = 531.0
    assert board.sync([])[0]["t"]["state"] == "half_open"         # cooldown passed on the board's clock
