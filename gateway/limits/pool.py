"""Broker-side quota accounting: who holds how much of which limit (pure logic, no Ray).

A *cell* is one limit of one scope: `("route:chat", "requests")`, `("key:k1", "tokens")`,
`("key:k1", "concurrent")`, `("key:k1", "usd_day")`. Rate cells (`requests`, `tokens`) count per
fixed window of `window_s` seconds aligned to the epoch (so "per minute" means per wall-clock
minute); the `concurrent` cell counts slots held right now. Budget cells (`usd_day`,
`usd_month`, in nano-USD) count per UTC calendar day / month: requests reserve their worst-case
cost out of them at admission, and settle (consume) the actual cost afterwards.

The invariant that makes limits exact across replicas: for every cell,

    sum(held by every holder) + debt <= limit          (debt: token overage, see charge())

A holder (a gateway replica) may only admit a request out of quota it holds, so the requests a
cell admits in one window can never exceed its limit, whatever the number of replicas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

Cell = tuple[str, str]          # (scope, dim)
RATE_DIMS = ("requests", "tokens")
BUDGET_DIMS = ("usd_day", "usd_month")
WINDOWED = RATE_DIMS + BUDGET_DIMS
CONCURRENT = "concurrent"
NANO = 1_000_000_000            # budget cells count nano-USD (integers, like every other cell)


def usd_to_nano(usd: float) -> int:
    """Round up: a reservation is never smaller than the cost it stands for."""
    return int(math.ceil(max(usd, 0.0) * NANO - 1e-6)) if usd > 0 else 0


def budget_period(dim: str, now: float) -> tuple[int, float]:
    """(period id, seconds until it ends) of a budget cell at wall time `now`: the UTC calendar
    day / month, the same periods the cost ledger totals spend in (costs/budget.periods)."""
    if dim == "usd_day":
        return int(now // 86400), (int(now // 86400) + 1) * 86400 - now
    t = datetime.fromtimestamp(now, tz=timezone.utc)
    nxt = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=timezone.utc)
    return t.year * 12 + t.month - 1, nxt.timestamp() - now


@dataclass(slots=True)
class CellState:
    limit: int
    window: int = -1                        # rate cells: the window `held` belongs to
    held: dict[str, int] = field(default_factory=dict)
    debt: int = 0                           # rate cells: usage above what was leased (tpm overage);
                                            # budget cells: cost settled (consumed) this period
    floor: int = 0                          # budget cells: hosted spend the cost ledger knows of
                                            # (it also saw what this broker did not: restarts)
    local: int = 0                          # budget cells: spend priced from accelerator time,
                                            # which only the ledger ever sees

    def spent(self) -> int:
        # debt and floor are lower bounds of the same hosted spend (each may miss what the other
        # saw): their max is one too, never double-counting a request both know of. Local spend
        # is in neither debt nor floor, so it is added, not folded into the max (a restarted
        # broker's debt would otherwise hide it).
        return max(self.debt, self.floor) + self.local

    def free(self) -> int:
        return self.limit - sum(self.held.values()) - self.spent()


@dataclass(slots=True)
class Shortfall:
    cell: Cell
    limit: int
    free: int
    reset_s: float                          # until quota comes back: window end, or a guess for slots


@dataclass(slots=True)
class GrantResult:
    ok: bool
    window: int
    reset_s: float                          # seconds until the current window ends
    grants: dict[Cell, int] = field(default_factory=dict)
    free: dict[Cell, int] = field(default_factory=dict)       # free after this call (for headers)
    short: list[Shortfall] = field(default_factory=list)
    # cell -> (window, reset_s) for cells whose window is not the rate window (budget periods)
    windows: dict[Cell, tuple[int, float]] = field(default_factory=dict)


class QuotaPool:
    """All cells of all scopes. Holders are opaque ids (one per gateway replica)."""

    def __init__(self, *, window_s: float = 60.0, slot_retry_s: float = 1.0):
        self.window_s = window_s
        # A rejected `max_concurrent` request can retry once some in-flight request ends; we
        # cannot know when, so Retry-After uses this guess.
        self.slot_retry_s = slot_retry_s
        self.cells: dict[Cell, CellState] = {}

    # -- windows -------------------------------------------------------------------------
    def window_of(self, now: float) -> int:
        return int(now // self.window_s)

    def reset_s(self, now: float) -> float:
        return (self.window_of(now) + 1) * self.window_s - now

    def period(self, dim: str, now: float) -> tuple[int, float]:
        """(window id, seconds left in it) of a windowed cell."""
        if dim in BUDGET_DIMS:
            return budget_period(dim, now)
        return self.window_of(now), self.reset_s(now)

    def _cell(self, cell: Cell, limit: int, now: float) -> CellState:
        st = self.cells.get(cell)
        if st is None:
            st = self.cells[cell] = CellState(limit=limit)
        # The config is the holders' (all replicas run the same gateway.yaml); the last caller
        # wins so a redeploy with a new limit takes effect without restarting the broker.
        st.limit = limit
        if cell[1] in WINDOWED:
            w = self.period(cell[1], now)[0]
            if st.window != w:
                # A new window: every lease of the old one is void on the holders' side too (they
                # expire locally no later than the window end), so nothing is carried over.
                st.window, st.held, st.debt, st.floor, st.local = w, {}, 0, 0, 0
        return st

    # -- operations ----------------------------------------------------------------------
    def grant(self, holder: str, needs: dict[Cell, tuple[int, int, int]], now: float,
              floors: dict[Cell, int | tuple[int, int]] | None = None) -> GrantResult:
        """All-or-nothing: give `holder` `need` of every cell, plus up to `want` extra each.

        needs: cell -> (limit, need, want_extra). Extra quota is what makes the hot path local:
        the holder admits its next requests out of it without calling the broker. When other
        holders hold quota of the cell, extra is capped at a fair share of what is free so no
        replica parks the whole limit while another one is busy.

        Budget cells admit a request while anything at all is free, reserving its whole worst
        case even past the limit: a budget blocks once reached, and the request that crosses it
        crosses it by at most its own worst case (never by the sum of a concurrent burst's).
        `floors`: budget cell -> spend the cost ledger knows of this period, or (that spend, the
        part of it priced from accelerator time) (see CellState).
        """
        w = self.window_of(now)
        res = GrantResult(ok=True, window=w, reset_s=self.reset_s(now))
        states = {c: self._cell(c, lim, now) for c, (lim, _, _) in needs.items()}
        for c, n in (floors or {}).items():
            st = states.get(c)
            if st is not None and c[1] in BUDGET_DIMS:
                total, local = (n[0], n[1]) if isinstance(n, (tuple, list)) else (n, 0)
                st.floor = max(st.floor, total - local)
                st.local = max(st.local, local)
        for c, (lim, need, _) in needs.items():
            st = states[c]
            free = st.free()
            budget = c[1] in BUDGET_DIMS
            if (free <= 0 and need > 0) if budget else free < need:
                res.ok = False
                if budget:
                    reset = budget_period(c[1], now)[1]
                else:
                    reset = res.reset_s if c[1] in RATE_DIMS else self.slot_retry_s
                    if need > lim:
                        # One request asking more than the whole limit (huge max_tokens) can never pass.
                        reset = math.inf
                res.short.append(Shortfall(cell=c, limit=lim, free=max(free, 0), reset_s=reset))
        if not res.ok:
            res.free = {c: max(st.free(), 0) for c, st in states.items()}
            return res
        for c, (_, need, want) in needs.items():
            st = states[c]
            spare = st.free() - need
            others = sum(1 for h, n in st.held.items() if n > 0 and h != holder)
            extra = min(max(want, 0), spare if others == 0 else spare // (others + 1))
            got = need + max(extra, 0)
            st.held[holder] = st.held.get(holder, 0) + got
            res.grants[c] = got
            res.free[c] = st.free()
            if c[1] in BUDGET_DIMS:
                res.windows[c] = budget_period(c[1], now)
        return res

    def release(self, holder: str, returns: dict[Cell, tuple[int, int]], now: float) -> None:
        """Holder hands back unused quota: cell -> (window, amount). Stale windows are ignored:
        the new window already started from zero."""
        for c, (window, n) in returns.items():
            st = self.cells.get(c)
            if st is None or n <= 0:
                continue
            if c[1] in WINDOWED:
                self._cell(c, st.limit, now)
                if window != st.window:
                    continue
            have = st.held.get(holder, 0)
            st.held[holder] = have - min(n, have)
            if st.held[holder] == 0:
                del st.held[holder]

    def charge(self, cell: Cell, n: int, now: float) -> None:
        """Usage above what a holder had leased (actual tokens > the pre-charged estimate and no
        lease left to cover it). It is spent, so it reduces what the current window can grant."""
        st = self.cells.get(cell)
        if st is None or n <= 0 or cell[1] not in WINDOWED:
            return
        self._cell(cell, st.limit, now)
        st.debt += n

    def consume(self, holder: str, consumed: dict[Cell, tuple[int, int]], now: float) -> None:
        """Budget cells: settled cost that the holder had reserved out of its lease, cell ->
        (window, nano-USD). It moves from the holder's lease to the period's spend, so it stays
        counted when the holder later hands its leases back or dies."""
        for c, (window, n) in consumed.items():
            st = self.cells.get(c)
            if st is None or n <= 0 or c[1] not in BUDGET_DIMS:
                continue
            self._cell(c, st.limit, now)
            if window != st.window:
                continue                        # a past period's spend: its window is closed
            have = st.held.get(holder, 0)
            take = min(n, have)
            if take:
                st.held[holder] = have - take
                if st.held[holder] == 0:
                    del st.held[holder]
            st.debt += n

    def holders_of(self, cells: list[Cell], *, exclude: str) -> set[str]:
        """Holders other than `exclude` that hold quota of any of `cells` (reclaim candidates)."""
        out: set[str] = set()
        for c in cells:
            st = self.cells.get(c)
            if st is not None:
                out.update(h for h, n in st.held.items() if n > 0 and h != exclude)
        return out

    def drop_holder(self, holder: str) -> None:
        """A holder is gone (shut down or presumed dead): everything it held returns."""
        for st in self.cells.values():
            st.held.pop(holder, None)

    def free(self, cell: Cell, now: float) -> int | None:
        st = self.cells.get(cell)
        if st is None:
            return None
        self._cell(cell, st.limit, now)
        return st.free()
