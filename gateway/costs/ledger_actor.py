"""The shared ledger actor: spend totals every gateway replica sees, and the one Parquet writer.

Replicas batch their rows to it (CostTracker, every `sync_interval_s`) instead of calling it per
request, and get the current day/month spend of every budgeted scope back in the same reply, so
a budget set on a key is enforced across all replicas. One writer per ledger URL keeps the
Parquet parts few and large. It also prices local (serve) targets: every flush it reads how many
replica-seconds each local app used since the last one (ReadinessBoard) and shares that cost out
to the period's answered requests by tokens; replica time no answer paid for (an idle period, or
one whose requests all failed) becomes one `idle` row outside every key's and route's spend, so
the ledger's local total is the accelerator bill, comparable with hosted spend, and a request
that got no answer is never billed.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime, timezone
from typing import Any

import ray

from gateway.costs.budget import periods
from gateway.costs.ledger import FlushError, Ledger
from gateway.costs.pricing import accelerator_cost_usd, allocate_local
from gateway.costs.schema import LedgerRow

log = logging.getLogger(__name__)

NAMESPACE = "thawline"
READINESS_NAME = "thawline-readiness"


def ledger_actor_name(url: str | None) -> str:
    # One actor per ledger URL: two gateways (or two tests) with different ledgers never mix.
    return "thawline-ledger-" + hashlib.sha256((url or "memory").encode()).hexdigest()[:10]


@ray.remote(num_cpus=0, max_restarts=-1)
class LedgerActor:
    def __init__(self, url: str | None, storage_options: dict | None, flush_interval_s: float):
        self.ledger = Ledger(url, storage_options)
        self.flush_interval_s = flush_interval_s
        self.ledger.load_totals(datetime.now(timezone.utc))
        self.pending_local: dict[str, list[dict]] = {}
        self.local_targets: dict[str, tuple[str, float]] = {}
        self.last_seconds: dict[str, float] = {}
        self._loop_task: asyncio.Task | None = None
        self._flush_lock: asyncio.Lock | None = None

    def _ensure_loop(self) -> None:
        if self._loop_task is None:
            self._flush_lock = asyncio.Lock()
            self._loop_task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except Exception as e:       # kept in the buffer; retried next period
                log.error("ledger flush failed: %s", e)

    async def push(self, rows: list[dict], budget_scopes: list[str],
                   local_targets: dict[str, tuple[str, float]] | None = None) -> dict[tuple[str, str], float]:
        """Append a replica's rows; return this day's and month's spend of `budget_scopes`."""
        self._ensure_loop()
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
        day, month = periods(datetime.now(timezone.utc))
        t = self.ledger.totals
        return {(s, p): t.get(s, p) for s in budget_scopes for p in (day, month)}

    async def _allocate_local(self) -> None:
        if not self.local_targets:
            return
        try:
            board = ray.get_actor(READINESS_NAME, namespace=NAMESPACE)
        except ValueError:
            board = None
        for target, (app, usd_per_hour) in self.local_targets.items():
            rows = self.pending_local.pop(target, [])
            if board is None:
                # No board, no replica-seconds: the rows are kept, marked unpriced, not lost.
                for r in rows:
                    r["pricing"] = "local_unpriced"
                self.ledger.append(rows)
                continue
            secs = float((await board.get.remote(app)).get("replica_seconds", 0.0))
            last = self.last_seconds.get(target)
            self.last_seconds[target] = secs
            if last is None:
                # First sight of this app: the seconds so far are not this period's; they become
                # the baseline, and the rows wait for the next flush to be priced.
                if rows:
                    self.pending_local[target] = rows
                continue
            cost = accelerator_cost_usd(secs - last, usd_per_hour)
            # Requests that got no answer pay nothing (issue 11); replica time no answer paid
            # for is its own `idle` line, outside every key's and route's spend.
            shares, unbilled = allocate_local(cost, rows)
            for r, c in zip(rows, shares):
                r["cost_usd"] = c
            if rows:
                self.ledger.append(rows)
            if unbilled > 0:
                idle = LedgerRow(key_id="-", route="-", target=target, model=app, status="idle",
                                 attempts=0, cost_usd=unbilled, pricing="local").to_dict()
                self.ledger.append([idle])

    async def flush(self) -> int:
        """Price pending local rows, then write everything buffered. Returns rows written."""
        self._ensure_loop()
        async with self._flush_lock:
            await self._allocate_local()
            if self.ledger.fs is None:
                return 0
            rows = self.ledger.take()
            if not rows:
                return 0
            try:
                await asyncio.to_thread(self.ledger.write, rows)
            except FlushError as e:
                self.ledger.restore(e.unwritten)
                raise
            return len(rows)

    async def query(self, group_by: str, since: datetime | None) -> list[dict]:
        self._ensure_loop()
        # Snapshot the unflushed rows here, on the loop that appends to them; read files in a thread.
        return await asyncio.to_thread(self.ledger.query, group_by, since, mem=self.ledger.unflushed())

    async def stats(self) -> dict[str, Any]:
        return {"buffered": len(self.ledger.buffer), "flushed": self.ledger.flushed_rows,
                "pending_local": {k: len(v) for k, v in self.pending_local.items()},
                "memory_rows": len(self.ledger.memory)}


def get_ledger_actor(url: str | None, storage_options: dict | None, flush_interval_s: float):
    """Detached: it must outlive whichever replica created it, and flush after any one leaves."""
    return LedgerActor.options(name=ledger_actor_name(url), namespace=NAMESPACE, get_if_exists=True,
                               lifetime="detached", max_concurrency=1000).remote(
        url, storage_options, flush_interval_s)
