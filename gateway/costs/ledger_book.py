"""LedgerBook: the ledger actor's bookkeeping without Ray, I/O-free apart from the Ledger's own.

What the shared ledger actor (ledger_actor.LedgerActor) decides, as pure logic with an injected
clock, so it is unit-tested with fakes (tests/unit/test_ledger_book.py):

- `push`: a replica's batch of rows. Priced rows go to the ledger at once; rows of local (serve)
  targets wait for the next `price_local`. The reply is this day's and month's spend of the
  replica's budgeted scopes (how a budget is enforced across replicas).
- `price_local`: given how many replica-seconds each local app has used so far (the readiness
  board's `replica_seconds`, read by the actor), the cost of each target's replica time since the
  last call is shared out to that period's answered rows by tokens; replica time no answer paid
  for becomes one `idle` row outside every key's and route's spend. The first reading of an app
  is only a baseline (the seconds so far are not this period's): its rows wait one more period.
  Without a board (`None`) the rows are kept, marked `local_unpriced`, not lost.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from gateway.costs.budget import LOCAL, periods
from gateway.costs.ledger import Ledger
from gateway.costs.pricing import accelerator_cost_usd, allocate_local
from gateway.costs.schema import LedgerRow


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class LedgerBook:
    def __init__(self, ledger: Ledger, clock: Callable[[], datetime] = _utcnow) -> None:
        self.ledger = ledger
        self.clock = clock
        self.pending_local: dict[str, list[dict]] = {}          # target -> rows awaiting a price
        self.local_targets: dict[str, tuple[str, float]] = {}   # target -> (serve app, usd_per_hour)
        self.last_seconds: dict[str, float] = {}                # target -> app's replica-seconds last time

    def push(self, rows: list[dict], budget_scopes: list[str],
             local_targets: dict[str, tuple[str, float]] | None = None) -> dict[tuple[str, str], float]:
        """Append a replica's rows; return this day's and month's spend of `budget_scopes`."""
        if local_targets:
            self.local_targets.update(local_targets)
        priced = []
        for r in rows:
            if r["pricing"] == "local":
                self.pending_local.setdefault(r["target"], []).append(r)
            else:
                priced.append(r)
        if priced:
            self.ledger.append(priced)
        day, month = periods(self.clock())
        t = self.ledger.totals
        out = {(s, p): t.get(s, p) for s in budget_scopes for p in (day, month)}
        # and the accelerator-priced part of each, where there is one (see budget.LOCAL)
        out.update({(LOCAL + s, p): v for s in budget_scopes for p in (day, month) if (v := t.get(LOCAL + s, p))})
        return out

    def local_apps(self) -> list[str]:
        """The serve apps whose replica-seconds the next `price_local` needs."""
        return sorted({app for app, _ in self.local_targets.values()})

    def price_local(self, replica_seconds: Mapping[str, float] | None) -> None:
        """Price the pending local rows from `replica_seconds` (app -> seconds used so far, as
        the readiness board reports it; an app missing counts 0); None: there is no board."""
        for target, (app, usd_per_hour) in self.local_targets.items():
            rows = self.pending_local.pop(target, [])
            if replica_seconds is None:
                # No board, no replica-seconds: the rows are kept, marked unpriced, not lost.
                for r in rows:
                    r["pricing"] = "local_unpriced"
                self.ledger.append(rows)
                continue
            secs = float(replica_seconds.get(app, 0.0))
            last = self.last_seconds.get(target)
            self.last_seconds[target] = secs
            if last is None:
                # First sight of this app: the seconds so far are not this period's; they become
                # the baseline, and the rows wait for the next flush to be priced.
                if rows:
                    self.pending_local[target] = rows
                continue
            cost = accelerator_cost_usd(secs - last, usd_per_hour)
            # Requests that got no answer pay nothing; replica time no answer paid
            # for is its own `idle` line, outside every key's and route's spend.
            shares, unbilled = allocate_local(cost, rows)
            for r, c in zip(rows, shares):
                r["cost_usd"] = c
            if rows:
                self.ledger.append(rows)
            if unbilled > 0:
                idle = LedgerRow(key_id="-", route="-", target=target, model=app, status="idle",
                                 attempts=0, cost_usd=unbilled, pricing="local", ts=self.clock()).to_dict()
                self.ledger.append([idle])

    def unflushed(self) -> list[dict]:
        """Every row a read must include beyond the store: the ledger's buffer plus the local rows
        still waiting for their price (they count as requests and tokens now; their cost shows
        once priced), so a request is in `/v1/usage` as soon as its replica has synced it."""
        return self.ledger.unflushed() + [dict(r) for rows in self.pending_local.values() for r in rows]

    def stats(self) -> dict[str, Any]:
        return {"buffered": len(self.ledger.buffer), "flushed": self.ledger.flushed_rows,
                "pending_local": {k: len(v) for k, v in self.pending_local.items()},
                "memory_rows": len(self.ledger.memory)}
