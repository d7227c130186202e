"""Circuit breaker per target: pure state machine with an injectable clock (no Ray here).

closed --(N consecutive failures, or failure ratio >= r over >= min_requests in window)--> open
open --(cooldown_s elapsed)--> half_open: ONE probe is let through
half_open --probe ok--> closed ; --probe fails--> open (cooldown restarts)

The same class runs in two places: inside the shared `BreakerBoard` actor (the authority all
gateway replicas agree on, see breaker_actor.py) and as each replica's local mirror, so a
replica reacts to its own failures at once and learns of the others' within one sync interval.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from gateway.config import BreakerConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class Breaker:
    cfg: BreakerConfig
    state: str = CLOSED
    consecutive: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    # (ts, ok) samples inside the ratio window
    samples: deque = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        horizon = now - self.cfg.window_s
        s = self.samples
        while s and s[0][0] < horizon:
            s.popleft()

    def current(self, now: float) -> str:
        if self.state == OPEN and now - self.opened_at >= self.cfg.cooldown_s:
            self.state, self.probe_in_flight = HALF_OPEN, False
        return self.state

    def allow(self, now: float) -> bool:
        """May a request go to this target now? In half-open, only the first caller gets the probe."""
        st = self.current(now)
        if st == CLOSED:
            return True
        if st == HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def release(self, now: float) -> None:
        """The request let through never reached the target (refused before it was sent): a
        half-open probe it held goes back unused, so the next request can probe."""
        if self.current(now) == HALF_OPEN:
            self.probe_in_flight = False

    def record(self, ok: bool, now: float) -> None:
        st = self.current(now)
        if st == HALF_OPEN:
            if ok:
                self._close()
            else:
                self._open(now)
            return
        if st == OPEN:
            return  # a late result of a request started before opening: no new information
        self.samples.append((now, ok))
        self._trim(now)
        if ok:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive >= self.cfg.consecutive_failures:
            self._open(now)
            return
        n = len(self.samples)
        if n >= self.cfg.min_requests:
            fails = sum(1 for _, good in self.samples if not good)
            if fails / n >= self.cfg.failure_ratio:
                self._open(now)

    def _open(self, now: float) -> None:
        self.state, self.opened_at, self.probe_in_flight = OPEN, now, False
        self.consecutive = 0
        self.samples.clear()

    def _close(self) -> None:
        self.state, self.consecutive, self.probe_in_flight = CLOSED, 0, False
        self.samples.clear()

    def snapshot(self) -> dict:
        return {"state": self.state, "opened_at": self.opened_at}

    def adopt(self, snap: dict) -> None:
        """Take the shared authority's view (a replica's mirror after a sync)."""
        if snap["state"] != self.state:
            self.state, self.opened_at, self.probe_in_flight = snap["state"], snap["opened_at"], False
            self.consecutive = 0
            self.samples.clear()


class BreakerSet:
    """Breakers by target id, plus the batch of outcomes not yet pushed to the shared actor."""

    def __init__(self, cfg: BreakerConfig, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.clock = cfg, clock
        self.breakers: dict[str, Breaker] = {}
        self.pending: list[tuple[str, bool, float]] = []

    def get(self, target: str) -> Breaker:
        b = self.breakers.get(target)
        if b is None:
            b = self.breakers[target] = Breaker(self.cfg)
        return b

    def allow(self, target: str) -> bool:
        return self.get(target).allow(self.clock())

    def release(self, target: str) -> None:
        self.get(target).release(self.clock())

    def record(self, target: str, ok: bool) -> None:
        now = self.clock()
        self.get(target).record(ok, now)
        self.pending.append((target, ok, now))

    def state(self, target: str) -> str:
        return self.get(target).current(self.clock())

    def take_pending(self) -> list[tuple[str, bool, float]]:
        p, self.pending = self.pending, []
        return p

    def apply_events(self, events: list[tuple[str, bool, float]]) -> None:
        """Authority side: replay a replica's outcomes in its order, on the authority's clock
        (replica clocks are not comparable; a sync interval of skew does not matter here)."""
        for target, ok, _ in events:
            self.get(target).record(ok, self.clock())

    def snapshot(self) -> dict[str, dict]:
        now = self.clock()
        for b in self.breakers.values():
            b.current(now)
        return {t: b.snapshot() for t, b in self.breakers.items()}

    def adopt(self, snaps: dict[str, dict], local_now: float, remote_now: float) -> None:
        # opened_at is on the actor's monotonic clock; shift it onto ours
        shift = local_now - remote_now
        # A target with outcomes recorded here after the batch was taken (while the sync was in
        # flight) keeps its local state this round: the snapshot predates them, and adopting it
        # would e.g. close a breaker that the last failure just opened and forget its count. The
        # next sync sends them, and the answer then reflects them.
        unsent = {t for t, _, _ in self.pending}
        for t, s in snaps.items():
            if t not in unsent:
                self.get(t).adopt({"state": s["state"], "opened_at": s["opened_at"] + shift})
