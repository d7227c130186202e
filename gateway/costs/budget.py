"""Spend totals per scope and period, and the budget check (pure)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.adapters import adapter_scope
from gateway.costs.schema import BudgetSpec


def periods(ts: datetime) -> tuple[str, str]:
    """UTC calendar day and month the spend at `ts` counts towards (f-strings: strftime is slow
    enough to matter on the request path)."""
    month = f"{ts.year:04d}-{ts.month:02d}"
    return f"{month}-{ts.day:02d}", month


@dataclass(frozen=True, slots=True)
class Overrun:
    scope: str          # "key:<id>" | "route:<alias>" | "adapter:<route>:<adapter>"
    period: str         # "day" | "month"
    spent: float
    limit: float

    def message(self) -> str:
        kind, name = self.scope.split(":", 1)
        return (f"budget exceeded: {kind} {name!r} has spent ${self.spent:.4f} of its "
                f"${self.limit:.4f} per {self.period} budget")


# Spend priced from accelerator time (local targets) is also counted under LOCAL + scope: the limit
# broker never sees it (it is priced after the request), so a restarted broker adds it to the
# hosted spend it settles itself instead of taking the max of two views that each miss a part.
LOCAL = "local@"


class SpendTotals:
    """(scope, period-id) -> USD. Keys are tiny; old periods are pruned on month change."""

    def __init__(self) -> None:
        self.usd: dict[tuple[str, str], float] = {}

    def add(self, key_id: str, route: str, cost: float, ts: datetime, *, local: bool = False,
            adapter: str | None = None) -> None:
        if not cost:
            return
        scopes: tuple[str, ...] = (f"key:{key_id}", f"route:{route}")
        if adapter is not None:
            scopes += (adapter_scope(route, adapter),)
        for scope in scopes + (tuple(LOCAL + s for s in scopes) if local else ()):
            for p in periods(ts):
                k = (scope, p)
                self.usd[k] = self.usd.get(k, 0.0) + cost

    def merge(self, other: dict[tuple[str, str], float]) -> None:
        for k, v in other.items():
            self.usd[k] = self.usd.get(k, 0.0) + v

    def prune(self, now: datetime) -> None:
        day, month = periods(now)
        self.usd = {k: v for k, v in self.usd.items() if k[1] in (day, month)}

    def get(self, scope: str, period_id: str) -> float:
        return self.usd.get((scope, period_id), 0.0)


def check(budgets: dict[str, BudgetSpec], scopes: list[str], spent, now: datetime) -> Overrun | None:
    """First budget among `scopes` that is used up. `spent(scope, period_id) -> USD`.
    A budget blocks once spend *reaches* it: the request that crosses it was already admitted."""
    day, month = periods(now)
    for scope in scopes:
        b = budgets.get(scope)
        if b is None:
            continue
        if b.usd_per_day is not None and (s := spent(scope, day)) >= b.usd_per_day:
            return Overrun(scope, "day", s, b.usd_per_day)
        if b.usd_per_month is not None and (s := spent(scope, month)) >= b.usd_per_month:
            return Overrun(scope, "month", s, b.usd_per_month)
    return None
