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

The bookkeeping is the pure `LedgerBook` (ledger_book.py, unit-tested); this class adds what
needs Ray or an event loop: reading the readiness board, the periodic flush, writes in a thread.
It is a plain class; `get_ledger_actor` makes it the named actor.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

from gateway.costs.ledger import FlushError, Ledger
from gateway.costs.ledger_book import LedgerBook
from gateway.names import NAMESPACE, READINESS_ACTOR, get_or_create_actor, ledger_actor_name
from gateway.traffic import TrafficBook

log = logging.getLogger(__name__)


class LedgerActor:
    def __init__(self, url: str | None, storage_options: dict | None, flush_interval_s: float,
                 compact_interval_s: float = 600.0):
        self.ledger = Ledger(url, storage_options)
        self.book = LedgerBook(self.ledger)
        self.traffic = TrafficBook()            # every replica's traffic counters (gateway/traffic.py)
        self.flush_interval_s = flush_interval_s
        self.compact_interval_s = compact_interval_s
        # start-up reads one footer per compacted day plus today's uncompacted parts (compaction.py)
        self.ledger.load_totals(self.book.clock())
        self._compacted_at = float("-inf")      # monotonic time of the last compaction of today
        self._compacted_day: str | None = None  # the day closed days were last compacted on
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
            try:
                await self.maybe_compact()
            except Exception as e:       # the parts stay; compaction is retried next period
                log.error("ledger compaction failed: %s", e)

    async def maybe_compact(self, *, force: bool = False) -> list[str]:
        """Closed days once per day (and at the first period), today every compact_interval_s."""
        if self.ledger.fs is None:
            return []
        now = self.book.clock()
        day = now.strftime("%Y-%m-%d")
        mono = time.monotonic()
        today = force or mono - self._compacted_at >= self.compact_interval_s
        if not (today or day != self._compacted_day):
            return []
        self._ensure_loop()
        async with self._flush_lock:   # queries never read a listing compaction is changing
            out = await asyncio.to_thread(self.ledger.compact, now, include_today=today)
        self._compacted_day = day
        if today:
            self._compacted_at = mono
        return out

    async def push(self, rows: list[dict], budget_scopes: list[str],
                   local_targets: dict[str, tuple[str, float]] | None = None,
                   traffic: tuple[str, dict] | None = None) -> dict[tuple[str, str], float]:
        """Append a replica's rows (and its traffic counters: (process id, counters)); return this
        day's and month's spend of `budget_scopes`."""
        self._ensure_loop()
        if traffic is not None:
            self.traffic.put(*traffic)
        return self.book.push(rows, budget_scopes, local_targets)

    async def _allocate_local(self) -> None:
        if not self.book.local_targets:
            return
        import ray

        try:
            board = ray.get_actor(READINESS_ACTOR, namespace=NAMESPACE)
        except ValueError:
            board = None
        seconds = None
        if board is not None:
            seconds = {app: float((await board.get.remote(app)).get("replica_seconds", 0.0))
                       for app in self.book.local_apps()}
        self.book.price_local(seconds)

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
        # Under the flush lock: rows a flush has taken but not yet written are in neither the
        # buffer nor the files, and a query then would miss them.
        async with self._flush_lock:
            # snapshot the unflushed rows on the loop that appends to them; read files in a thread
            return await asyncio.to_thread(self.ledger.query, group_by, since, mem=self.book.unflushed())

    async def series(self, column: str, since: datetime | None, bucket: str = "day") -> list[dict]:
        self._ensure_loop()
        async with self._flush_lock:
            return await asyncio.to_thread(self.ledger.series, column, since, bucket, mem=self.book.unflushed())

    async def activity(self, since: datetime | None, recent_n: int = 50) -> dict:
        """The dashboard's request view over all replicas: latency / TTFT percentiles per route,
        the newest requests, and the summed traffic counters."""
        self._ensure_loop()
        async with self._flush_lock:
            out = await asyncio.to_thread(self.ledger.activity, since, recent_n, mem=self.book.unflushed())
        return {**out, "traffic": self.traffic.total()}

    async def quarantined(self) -> list[str]:
        return await asyncio.to_thread(self.ledger.quarantined)

    async def stats(self) -> dict[str, Any]:
        return self.book.stats()


def get_ledger_actor(url: str | None, storage_options: dict | None, flush_interval_s: float,
                     compact_interval_s: float = 600.0):
    """Detached: it must outlive whichever replica created it, and flush after any one leaves."""
    return get_or_create_actor(LedgerActor, ledger_actor_name(url), url, storage_options, flush_interval_s,
                               compact_interval_s, max_restarts=-1, max_concurrency=1000)
