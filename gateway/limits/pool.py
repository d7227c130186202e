"""Broker-side quota accounting: who holds how much of which limit (pure logic, no Ray).

A *cell* is one limit of one scope: `("route:chat", "requests")`, `("key:k1", "tokens")`,
`("key:k1", "concurrent")`. Rate cells (`requests`, `tokens`) count per fixed window of
`window_s` seconds aligned to the epoch (so "per minute" means per wall-clock minute); the
`concurrent` cell counts slots held right now.

The invariant that makes limits exact across replicas: for every cell,

    sum(held by every holder) + debt <= limit          (debt: token overage, see charge())

A holder (a gateway replica) may only admit a request out of quota it holds, so the requests a
cell admits in one window can never exceed its limit, whatever the number of replicas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

Cell = tuple[str, str]          # (scope, dim)
RATE_DIMS = ("requests", "tokens")
CONCURRENT = "concurrent"


@dataclass(slots=True)
class CellState:
    limit: int
    window: int = -1                        # rate cells: the window `held` belongs to
    held: dict[str, int] = field(default_factory=dict)
    debt: int = 0                           # rate cells: usage above what was leased (tpm overage)

    def free(self) -> int:
        return self.limit - sum(self.held.values()) - self.debt


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

    def _cell(self, cell: Cell, limit: int, now: float) -> CellState:
        st = self.cells.get(cell)
        if st is None:
            st = self.cells[cell] = CellState(limit=limit)
        # The config is the holders' (all replicas run the same gateway.yaml); the last caller
        # wins so a redeploy with a new limit takes effect without restarting the broker.
        st.limit = limit
        if cell[1] in RATE_DIMS:
            w = self.window_of(now)
            if st.window != w:
                # A new window: every lease of the old one is void on the holders' side too (they
                # expire locally no later than the window end), so nothing is carried over.
                st.window, st.held, st.debt = w, {}, 0
        return st

    # -- operations ----------------------------------------------------------------------
    def grant(self, holder: str, needs: dict[Cell, tuple[int, int, int]], now: float) -> GrantResult:
        """All-or-nothing: give `holder` `need` of every cell, plus up to `want` extra each.

        needs: cell -> (limit, need, want_extra). Extra quota is what makes the hot path local:
        the holder admits its next requests out of it without calling the broker. When other
        holders hold quota of the cell, extra is capped at a fair share of what is free so no
        replica parks the whole limit while another one is busy.
        """
        w = self.window_of(now)
        res = GrantResult(ok=True, window=w, reset_s=self.reset_s(now))
        states = {c: self._cell(c, lim, now) for c, (lim, _, _) in needs.items()}
        for c, (lim, need, _) in needs.items():
            st = states[c]
            free = st.free()
            if free < need:
                res.ok = False
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
        return res

    def release(self, holder: str, returns: dict[Cell, tuple[int, int]], now: float) -> None:
        """Holder hands back unused quota: cell -> (window, amount). Stale windows are ignored:
        the new window already started from zero."""
        for c, (window, n) in returns.items():
            st = self.cells.get(c)
            if st is None or n <= 0:
                continue
            if c[1] in RATE_DIMS:
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
        if st is None or n <= 0 or cell[1] not in RATE_DIMS:
            return
        self._cell(cell, st.limit, now)
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
