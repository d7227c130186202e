"""Replica-side leases: the quota one gateway replica holds and admits from (pure logic, no Ray).

Times here are the replica's own monotonic clock. A rate lease granted for broker window `w`
with `reset_s` seconds left is valid locally until `t_sent + reset_s`, where `t_sent` is when
the request to the broker was SENT. The broker read its clock after that instant, so the local
expiry is never later than the real end of the window: a replica can never admit a request
out of window w's quota after window w ended, and no clock sync between hosts is needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from gateway.limits.pool import CONCURRENT, Cell


@dataclass(slots=True)
class _Demand:
    """Exponentially decayed amount taken over the last ~tau seconds: the lease size to ask for."""

    tau: float
    value: float = 0.0
    t: float = 0.0

    def add(self, n: float, now: float) -> None:
        self.value = self.value * math.exp(-max(now - self.t, 0.0) / self.tau) + n
        self.t = now

    def recent(self, now: float) -> float:
        return self.value * math.exp(-max(now - self.t, 0.0) / self.tau)


@dataclass(slots=True)
class RateLease:
    window: int = -1
    expires: float = -math.inf               # local monotonic time
    avail: int = 0
    last_used: float = 0.0

    def valid(self, now: float) -> bool:
        return now < self.expires


@dataclass(slots=True)
class SlotLease:
    held: int = 0
    in_use: int = 0
    last_used: float = 0.0


@dataclass(slots=True)
class Reservation:
    """What one admission took out of the local leases (rate: cell -> (window, n))."""

    rate: dict[Cell, tuple[int, int]] = field(default_factory=dict)
    slots: list[Cell] = field(default_factory=list)
    epoch: int = 0              # LocalLeases.epoch when taken; older ones settle to nothing


class LocalLeases:
    def __init__(self, *, horizon_s: float = 0.5):
        self.rate: dict[Cell, RateLease] = {}
        self.slots: dict[Cell, SlotLease] = {}
        self.demand: dict[Cell, _Demand] = {}
        self.charges: dict[Cell, int] = {}   # overage to report to the broker
        self.consumed: dict[Cell, tuple[int, int]] = {}   # budget cells: settled cost to report
        self.horizon_s = horizon_s
        self.epoch = 0

    # -- admission -----------------------------------------------------------------------
    def reserve(self, needs: dict[Cell, int], now: float, *, count_demand: bool = True
                ) -> tuple[Reservation, dict[Cell, int]]:
        """Take what the local leases can give right now; return (taken, deficits).

        Taking immediately (rather than checking, then calling the broker, then taking) means
        concurrent admissions on this replica never count the same local quota twice.
        """
        res = Reservation(epoch=self.epoch)
        deficits: dict[Cell, int] = {}
        # (get-then-create rather than setdefault(c, Obj()): that builds an object per call)
        for c, n in needs.items():
            if count_demand:            # once per admission, not per retry
                d = self.demand.get(c)
                if d is None:
                    d = self.demand[c] = _Demand(self.horizon_s)
                d.add(n, now)
            if c[1] == CONCURRENT:
                sl = self.slots.get(c)
                if sl is None:
                    sl = self.slots[c] = SlotLease()
                if sl.held - sl.in_use >= n:
                    sl.in_use += n
                    sl.last_used = now
                    res.slots.append(c)
                else:
                    deficits[c] = n
                continue
            ls = self.rate.get(c)
            if ls is None:
                ls = self.rate[c] = RateLease()
            if not ls.valid(now):
                ls.avail = 0
            # All or nothing per cell: a partial take would sit in this pending admission where
            # the broker cannot reclaim it (returnable() offers only `avail`), so two replicas
            # each holding part of the last request's quota would both be refused.
            # The caller hands the remainder back with its broker call (take_avail) instead.
            if ls.avail >= n:
                if n:
                    ls.avail -= n
                    ls.last_used = now
                    res.rate[c] = (ls.window, n)
            else:
                deficits[c] = n
        return res, deficits

    def take_avail(self, cells, now: float) -> dict[Cell, tuple[int, int]]:
        """Remove the unreserved remainder of these rate cells' leases, to hand back to the
        broker in the same call that asks for a whole admission's quota: the broker then sees
        all free quota in one place and either grants the request or not, never half of it."""
        out: dict[Cell, tuple[int, int]] = {}
        for c in cells:
            ls = self.rate.get(c)
            if ls is not None and ls.avail > 0 and ls.valid(now):
                out[c] = (ls.window, ls.avail)
                ls.avail = 0
        return out

    def want_extra(self, cell: Cell, now: float) -> int:
        """Extra quota to lease beyond the deficit: about `horizon_s` of recent demand. Slots are
        reused locally after each request, so none are leased ahead."""
        if cell[1] == CONCURRENT:
            return 0
        d = self.demand.get(cell)
        return int(math.ceil(d.recent(now))) if d else 0

    def still_valid(self, res: Reservation, now: float) -> bool:
        """Quota reserved before an await must still be ours (same epoch) and, for rate quota,
        inside its window after it."""
        return res.epoch == self.epoch and all(self.rate[c].valid(now) and self.rate[c].window == w for c, (w, _) in res.rate.items())

    def apply_grants(self, grants: dict[Cell, int], window: int, reset_s: float, t_sent: float,
                     deficits: dict[Cell, int], res: Reservation, now: float,
                     windows: dict[Cell, tuple[int, float]] | None = None) -> bool:
        """Add a broker grant; the deficit part goes to `res`, the rest to the local pool.
        `windows`: cell -> (window, reset_s) for cells not on the rate window (budget periods).

        Returns False when the grant arrived for an already expired window (a reply overtaken
        by a window change): nothing is added and the caller retries.
        """
        if now >= t_sent + reset_s:
            return False
        windows = windows or {}
        for c, (_, r) in windows.items():
            if now >= t_sent + r:
                return False
        for c, got in grants.items():
            if c[1] == CONCURRENT:
                sl = self.slots.setdefault(c, SlotLease())
                sl.held += got
                sl.in_use += deficits.get(c, 0)
                sl.last_used = now
                if deficits.get(c):
                    res.slots.append(c)
                continue
            cw, cr = windows.get(c, (window, reset_s))
            ls = self.rate.setdefault(c, RateLease())
            if ls.window != cw or not ls.valid(now):
                ls.window, ls.avail = cw, 0
            ls.expires = t_sent + cr              # same window: the later (still safe) expiry
            need = deficits.get(c, 0)
            ls.avail += got - need
            ls.last_used = now
            if need:
                w, n = res.rate.get(c, (cw, 0))
                # A reservation mixing two windows cannot happen: still_valid() is checked first.
                res.rate[c] = (cw, n + need)
        return True

    def unreserve(self, res: Reservation, now: float) -> None:
        """Give a reservation back to the local pool (admission failed elsewhere)."""
        if res.epoch != self.epoch:
            res.slots.clear()
            res.rate.clear()
            return
        for c in res.slots:
            self.slots[c].in_use -= 1
        for c, (w, n) in res.rate.items():
            ls = self.rate[c]
            if ls.window == w and ls.valid(now):
                ls.avail += n
        res.slots.clear()
        res.rate.clear()

    # -- settlement ----------------------------------------------------------------------
    def release_slots(self, cells: list[Cell], now: float, epoch: int | None = None) -> None:
        if epoch is not None and epoch != self.epoch:
            return                  # taken before forget_all(): the broker already has it back
        for c in cells:
            sl = self.slots[c]
            sl.in_use -= 1
            sl.last_used = now

    def settle_tokens(self, cell: Cell, window: int, charged: int, actual: int, now: float,
                      epoch: int | None = None) -> None:
        """Pre-charged `charged` tokens, used `actual`. Refund the difference into the lease while
        its window lasts, or cover an overage from the lease and report what it cannot cover."""
        ls = self.rate.get(cell)
        same = (ls is not None and ls.window == window and ls.valid(now)
                and (epoch is None or epoch == self.epoch))
        delta = actual - charged
        if delta < 0:
            if same:
                ls.avail += -delta
        elif delta > 0:
            cover = min(ls.avail, delta) if same else 0
            if cover:
                ls.avail -= cover
            if delta - cover:
                self.charges[cell] = self.charges.get(cell, 0) + delta - cover

    def settle_cost(self, cell: Cell, window: int, reserved: int, actual: int, now: float,
                    epoch: int | None = None) -> None:
        """Budget cells: reserved `reserved` nano-USD, the answer cost `actual`. The unused part
        goes back into the lease; the cost is reported as consumed (moved from this lease to the
        period's spend at the broker); an overage the lease cannot cover is charged as debt."""
        ls = self.rate.get(cell)
        same = (ls is not None and ls.window == window and ls.valid(now)
                and (epoch is None or epoch == self.epoch))
        if not same:
            # The broker dropped this lease (new period, or it took our quota back): the cost is
            # still spend of this period if the period is the same; report it as plain debt.
            if ls is not None and ls.window == window and actual > 0:
                self.charges[cell] = self.charges.get(cell, 0) + actual
            return
        delta = actual - reserved
        if delta <= 0:
            ls.avail += -delta
            used = actual
        else:
            cover = min(ls.avail, delta)
            ls.avail -= cover
            used = reserved + cover
            if delta - cover:
                self.charges[cell] = self.charges.get(cell, 0) + delta - cover
        if used > 0:
            w, n = self.consumed.get(cell, (window, 0))
            self.consumed[cell] = (window, (n if w == window else 0) + used)

    def pop_charges(self) -> dict[Cell, int]:
        out, self.charges = self.charges, {}
        return out

    def pop_consumed(self) -> dict[Cell, tuple[int, int]]:
        out, self.consumed = self.consumed, {}
        return out

    # -- giving back ---------------------------------------------------------------------
    def returnable(self, now: float, *, idle_s: float, force: set[Cell] | frozenset = frozenset()
                   ) -> dict[Cell, tuple[int, int]]:
        """Unused quota to hand back: all of it for `force`d cells (the broker asked, someone
        else is waiting), otherwise only what sat unused for `idle_s`. Removed locally first,
        so it can never be both used here and granted elsewhere."""
        out: dict[Cell, tuple[int, int]] = {}
        for c, ls in self.rate.items():
            if ls.avail > 0 and ls.valid(now) and (c in force or now - ls.last_used >= idle_s):
                out[c] = (ls.window, ls.avail)
                ls.avail = 0
        for c, sl in self.slots.items():
            idle = sl.held - sl.in_use
            if idle > 0 and (c in force or now - sl.last_used >= idle_s):
                out[c] = (0, idle)
                sl.held -= idle
        return out

    def forget_all(self) -> None:
        """Drop every lease without handing it back (the broker already took it back). Slots of
        requests in flight stay counted as in use and are released by their settle as usual."""
        self.epoch += 1
        # The broker dropped the leases these costs were to be moved out of: still spend.
        for c, (_, n) in self.consumed.items():
            self.charges[c] = self.charges.get(c, 0) + n
        self.consumed.clear()
        for ls in self.rate.values():
            ls.avail = 0
        for sl in self.slots.values():
            sl.held = sl.in_use = 0

    def return_all(self, now: float) -> dict[Cell, tuple[int, int]]:
        return self.returnable(now, idle_s=-math.inf, force=frozenset(self.rate) | frozenset(self.slots))

    # -- headers -------------------------------------------------------------------------
    def local_avail(self, cell: Cell, now: float) -> int:
        ls = self.rate.get(cell)
        return ls.avail if ls is not None and ls.valid(now) else 0
