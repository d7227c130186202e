"""Circuit breaker state machine with an injected clock."""
from __future__ import annotations

from gateway.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSet
from gateway.config import BreakerConfig


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(**kw):
    clock = Clock()
    return BreakerSet(BreakerConfig(**kw), clock), clock


def test_opens_after_consecutive_failures_and_half_opens_after_cooldown():
    bs, clock = make(consecutive_failures=3, cooldown_s=10)
    for _ in range(2):
        bs.record("t", False)
    assert bs.state("t") == CLOSED and bs.allow("t")
    bs.record("t", False)
    assert bs.state("t") == OPEN and not bs.allow("t")
    clock.t += 9.9
    assert not bs.allow("t")
    clock.t += 0.2
    assert bs.state("t") == HALF_OPEN
    assert bs.allow("t")            # the one probe
    assert not bs.allow("t")        # everyone else waits for its result
    bs.record("t", True)
    assert bs.state("t") == CLOSED and bs.allow("t")


def test_failed_probe_reopens_for_a_full_cooldown():
    bs, clock = make(consecutive_failures=1, cooldown_s=5)
    bs.record("t", False)
    clock.t += 5
    assert bs.allow("t")
    bs.record("t", False)
    assert bs.state("t") == OPEN
    clock.t += 4.9
    assert not bs.allow("t")


def test_success_resets_consecutive_count():
    bs, _ = make(consecutive_failures=3, min_requests=100)
    for _ in range(10):
        bs.record("t", False)
        bs.record("t", False)
        bs.record("t", True)
    assert bs.state("t") == CLOSED


def test_failure_ratio_opens_within_window_only():
    bs, clock = make(consecutive_failures=100, failure_ratio=0.5, min_requests=10, window_s=30)
    for i in range(9):
        bs.record("t", i % 2 == 0)      # 4 failures / 9: below min_requests anyway
    assert bs.state("t") == CLOSED
    bs.record("t", False)               # 5/10 = 0.5
    assert bs.state("t") == OPEN
    bs2, clock2 = make(consecutive_failures=100, failure_ratio=0.5, min_requests=4, window_s=10)
    bs2.record("t", False)
    bs2.record("t", False)
    clock2.t += 11                      # old failures leave the window
    bs2.record("t", True)
    bs2.record("t", True)
    bs2.record("t", False)
    assert bs2.state("t") == CLOSED     # 1/3 in window, below min_requests


def test_targets_are_independent_and_sync_adopts_authority():
    authority, aclock = make(consecutive_failures=2)
    replica, rclock = make(consecutive_failures=2)
    replica.record("a", False)
    other, _ = make(consecutive_failures=2)
    other.record("a", False)
    authority.apply_events(replica.take_pending())
    authority.apply_events(other.take_pending())
    assert authority.state("a") == OPEN and authority.state("b") == CLOSED
    # each replica saw one failure only; the shared view opens both
    assert replica.state("a") == CLOSED
    replica.adopt(authority.snapshot(), local_now=rclock(), remote_now=aclock())
    assert replica.state("a") == OPEN and not replica.allow("a")
    assert replica.take_pending() == []


def test_a_failure_recorded_while_a_sync_is_in_flight_is_not_forgotten():
    """The board's answer predates outcomes recorded during the sync: adopting it must not close
    the breaker the last of them opened (nor reset its count); the next sync carries them."""
    authority, aclock = make(consecutive_failures=4)
    replica, rclock = make(consecutive_failures=4)
    for _ in range(3):
        replica.record("dead", False)
    batch = replica.take_pending()          # the sync takes 3 failures ...
    replica.record("dead", False)           # ... the 4th lands while it is in flight: open here
    assert replica.state("dead") == OPEN
    authority.apply_events(batch)
    assert authority.state("dead") == CLOSED      # the board has seen 3
    replica.adopt(authority.snapshot(), local_now=rclock(), remote_now=aclock())
    assert replica.state("dead") == OPEN and not replica.allow("dead")
    authority.apply_events(replica.take_pending())   # the next sync: the board opens too
    replica.adopt(authority.snapshot(), local_now=rclock(), remote_now=aclock())
    assert authority.state("dead") == OPEN and replica.state("dead") == OPEN


def test_a_probe_refused_before_sending_is_released():
    """A half-open probe whose request was refused as a 400 before reaching the target must not
    keep the target blocked: the next request gets to probe."""
    from gateway.breaker import BreakerSet
    from gateway.config import BreakerConfig

    now = [0.0]
    bs = BreakerSet(BreakerConfig(consecutive_failures=1, cooldown_s=5), clock=lambda: now[0])
    bs.record("t", False)
    now[0] = 6.0
    assert bs.allow("t") and not bs.allow("t"), "one probe in half-open"
    bs.release("t")
    assert bs.allow("t"), "the released probe is available again"
    assert bs.state("t") == "half_open"
