"""The shared quota broker: one named Ray actor all gateway replicas lease limits from.

Why this design (exact across replicas, cheap on the hot path, Ray-native, no Redis):

- Exact: quota is only ever *leased* out of the broker (see pool.QuotaPool's invariant), and a
  replica admits only from quota it holds, so no interleaving of replicas can overshoot a limit.
  A central counter without leases would be exact too, but costs one actor round trip (and a
  serialization point) on every request.
- Cheap: a replica leases a chunk sized to its recent demand (lease.LocalLeases.want_extra), so
  a steady stream of requests is admitted from local memory; the broker is called about once per
  `lease_horizon_s` per hot cell, plus when a lease runs out.
- A lone client can still use the whole limit: a replica hands back quota it has not used for
  `idle_return_s`, and when a replica is short while others hold quota the broker asks those to
  hand back their unused part at once (the long-polled `watch` call below) and waits up to
  `max_wait_s` before rejecting. A 429 therefore means the quota is really in use (or a holder
  did not answer in time: an undershoot, never an overshoot).
- One actor is enough: it sees a few calls per replica per second, not one per request. Its
  methods are `async`, so waiting admissions and long-polls do not block each other, and state
  changes happen between awaits on one event loop (no locks).
- A replica that dies keeps nothing for long: rate leases end with their window, concurrency
  slots go back when it has not been heard from for `holder_ttl_s` (`watch` is its heartbeat).
  A replica wrongly presumed dead (event loop stalled that long) is told so and drops its leases;
  its requests already in flight are the one way max_concurrent can be exceeded.
- Broker restart (max_restarts=-1): the new broker starts empty while replicas still hold leases,
  so during the window it restarts in a limit can be overshot by what was leased before the crash.
  Persisting leases would put a write on the broker's every call; a crash is rare, a window short.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from gateway.limits.pool import Cell, QuotaPool
from gateway.limits.schema import LimiterTuning
from gateway.names import LIMITS_ACTOR, get_or_create_actor


class LimitBroker:
    """A plain class (no Ray): `get_broker` makes it the named actor. Unit tests drive it directly
    on an event loop with a fake `clock` (tests/unit/test_limits_broker.py)."""

    def __init__(self, tuning: dict | None = None, window_s: float = 60.0,
                 clock: Callable[[], float] = time.time):
        self.tuning = LimiterTuning(**(tuning or {}))
        self.pool = QuotaPool(window_s=window_s)
        self.clock = clock                              # windows are wall-clock minutes
        self.last_seen: dict[str, float] = {}
        self.reclaim: dict[str, set[Cell]] = {}         # holder -> cells it is asked to hand back
        self.wake: dict[str, asyncio.Event] = {}        # wakes the holder's pending watch()
        # Reclaim requests are numbered per holder; a holder's watch() acks the number it has
        # answered, so an acquire waits exactly until every holder it asked has handed back.
        self.asked_seq: dict[str, int] = {}
        self.answers: dict[str, int] = {}
        self.changed = asyncio.Event()                  # set (and replaced) whenever quota came back
        self.calls = {"acquire": 0, "watch": 0, "denied": 0}
        # Holders presumed dead whose quota went back to the pool. If one was only stalled, its
        # next call tells it to forget every lease it still holds (see LimitClient._watch_loop).
        self.dropped: set[str] = set()
        self.askers: dict[Cell, set[str]] = {}          # who ever asked for each cell (stats only)

    def _seen(self, holder: str, now: float) -> None:
        self.last_seen[holder] = now
        ttl = self.tuning.holder_ttl_s
        for h, t in list(self.last_seen.items()):
            if now - t > ttl:
                self.pool.drop_holder(h)
                self.dropped.add(h)
                for d in (self.last_seen, self.reclaim, self.wake, self.answers, self.asked_seq):
                    d.pop(h, None)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def acquire(self, holder: str, needs: dict[Cell, tuple[int, int, int]],
                      wait_s: float | None = None, returns: dict[Cell, tuple[int, int]] | None = None,
                      floors: dict[Cell, int | tuple[int, int]] | None = None) -> dict[str, Any]:
        """needs: cell -> (limit, need, want_extra). Returns the GrantResult as a dict.
        returns: the caller's unreserved remainder of the needed cells, handed back first, so
        the whole need is judged against all free quota at once (LocalLeases.take_avail).
        floors: budget cell -> spend the caller's cost ledger view knows of this period, or (that
        spend, its part priced from accelerator time), see pool.CellState."""
        self.calls["acquire"] += 1
        for c in needs:
            self.askers.setdefault(c, set()).add(holder)
        now = self.clock()
        self._seen(holder, now)
        if returns:
            self.pool.release(holder, returns, now)
            self._notify()
        wait_s = self.tuning.max_wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        asked: dict[str, int] = {}
        while True:
            res = self.pool.grant(holder, needs, self.clock(), floors)
            if res.ok:
                return _as_dict(res)
            short = [s.cell for s in res.short if s.reset_s != float("inf")]
            # Ask every other holder of a short cell to hand its unused part back, once each.
            pending = False
            for h in self.pool.holders_of(short, exclude=holder):
                if h not in asked:
                    asked[h] = self.asked_seq[h] = self.asked_seq.get(h, 0) + 1
                    self.reclaim.setdefault(h, set()).update(short)
                    if h in self.wake:
                        self.wake[h].set()
                if self.answers.get(h, 0) < asked[h]:
                    pending = True                      # asked, not answered yet
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                self.calls["denied"] += 1
                return _as_dict(res)
            changed = self.changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass

    async def watch(self, holder: str, returns: dict[Cell, tuple[int, int]],
                    charges: dict[Cell, int], timeout_s: float, ack: int = 0,
                    consumed: dict[Cell, tuple[int, int]] | None = None) -> tuple[list[Cell], int]:
        """A replica's long-poll: hand back `returns`, report `charges` (token overage), then wait
        until the broker wants quota back or `timeout_s`. Returns (cells to hand back, seq); the
        replica's next call passes `ack=seq` along with those cells' unused quota. `["*"]` means
        the broker had presumed this replica dead and took its quota back: it must drop its leases."""
        self.calls["watch"] += 1
        now = self.clock()
        if holder in self.dropped:
            # Both sides start from zero: whatever it was granted since (an acquire may have
            # come first) is dropped here as it forgets its leases there.
            self.dropped.discard(holder)
            self.pool.drop_holder(holder)
            self.last_seen[holder] = now
            self._notify()
            return ["*"], 0
        self._seen(holder, now)
        self.answers[holder] = max(self.answers.get(holder, 0), ack)
        if returns:
            self.pool.release(holder, returns, now)
        if consumed:
            self.pool.consume(holder, consumed, now)
        for c, n in charges.items():
            self.pool.charge(c, n, now)
        self._notify()                                  # a waiting acquire may now succeed
        ev = self.wake.setdefault(holder, asyncio.Event())
        if not self.reclaim.get(holder):
            try:
                await asyncio.wait_for(ev.wait(), timeout=timeout_s)
            except asyncio.TimeoutError:
                pass
        ev.clear()
        return sorted(self.reclaim.pop(holder, set())), self.asked_seq.get(holder, 0)

    async def release(self, holder: str, returns: dict[Cell, tuple[int, int]],
                      charges: dict[Cell, int] | None = None, drop: bool = False,
                      consumed: dict[Cell, tuple[int, int]] | None = None) -> None:
        now = self.clock()
        if consumed:
            self.pool.consume(holder, consumed, now)
        self.pool.release(holder, returns, now)
        for c, n in (charges or {}).items():
            self.pool.charge(c, n, now)
        if drop:
            self.pool.drop_holder(holder)
            for d in (self.last_seen, self.reclaim, self.answers, self.asked_seq):
                d.pop(holder, None)
            ev = self.wake.pop(holder, None)
            if ev:
                ev.set()
        self._notify()

    async def stats(self) -> dict[str, Any]:
        """Per-cell accounting, for tests and debugging."""
        now = self.clock()
        cells = {}
        for c, st in self.pool.cells.items():
            self.pool.free(c, now)                       # roll the window
            cells[f"{c[0]}|{c[1]}"] = {"limit": st.limit, "held": dict(st.held), "debt": st.debt,
                                        "floor": st.floor, "local": st.local,
                                        "free": st.free(), "window": st.window,
                                        "askers": len(self.askers.get(c, ()))}
        return {"cells": cells, "calls": dict(self.calls), "holders": sorted(self.last_seen)}


def _as_dict(res) -> dict[str, Any]:
    return {"ok": res.ok, "window": res.window, "reset_s": res.reset_s, "grants": res.grants,
            "free": res.free, "windows": res.windows,
            "short": [(s.cell, s.limit, s.free, s.reset_s) for s in res.short]}


def get_broker(tuning: LimiterTuning | None = None):
    """The cluster's broker, created on first use. Detached, because it must outlive whichever
    gateway replica happened to create it (replicas come and go with autoscaling)."""
    return get_or_create_actor(LimitBroker, LIMITS_ACTOR, (tuning or LimiterTuning()).model_dump(),
                               max_restarts=-1, max_concurrency=10_000)
