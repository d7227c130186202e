"""The cost ledger: buffered rows, spend totals, Parquet files on any fsspec URL (no Ray).

Layout: `<url>/date=YYYY-MM-DD/part-<unix_ms>-<rand>.parquet`, one file per flush per day
(hive-style, so DuckDB / pyarrow.dataset / Spark read it as a partitioned table), compacted by
the ledger actor into `date=YYYY-MM-DD/day-*.parquet` (compaction.py: closed days at start and
at the day's end, today every `compact_interval_s`); reads go through pyarrow.dataset. A part is
written under a dot-name and renamed, so readers never see half a file on `file://`; object
stores make the single PUT atomic by themselves.

Loss window on a crash: rows still in a replica's buffer (at most `CostTracker.sync_interval_s`)
plus rows in this buffer (at most `flush_interval_s`). A graceful shutdown flushes both.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from datetime import datetime, timezone

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gateway.costs.activity import ACTIVITY_COLUMNS, summarize
from gateway.costs.budget import SpendTotals, periods
from gateway.costs.compaction import (compact, month_totals, quarantined, read_files, spend_over_time,
                                      visible_files)
from gateway.costs.usage import GROUP_COLUMNS, IDLE_GROUP, LEDGER_SCHEMA, aggregate, rows_to_table

log = logging.getLogger(__name__)


class FlushError(Exception):
    def __init__(self, unwritten: list[dict]):
        super().__init__(f"ledger flush failed; {len(unwritten)} rows kept for the next flush")
        self.unwritten = unwritten


class Ledger:
    def __init__(self, url: str | None, storage_options: dict | None = None, *,
                 memory_rows: int = 100_000, max_buffer_rows: int = 1_000_000):
        self.url = url
        if url:
            self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = None, None
        self.buffer: list[dict] = []
        # Without a URL the ledger lives in memory only; it keeps the newest rows, bounded, so a
        # long-running gateway's memory stays flat (the totals for budgets are kept regardless).
        self.memory: deque[dict] = deque(maxlen=memory_rows)
        self.max_buffer_rows = max_buffer_rows
        self.totals = SpendTotals()
        self.flushed_rows = 0
        self.dropped_rows = 0

    # -- writing -------------------------------------------------------------------------
    def append(self, rows: list[dict]) -> None:
        for r in rows:
            self.totals.add(r["key_id"], r["route"], r["cost_usd"], r["ts"], local=r.get("pricing") == "local",
                            adapter=r.get("adapter"))
        if self.fs is None:
            self.memory.extend(rows)
            return
        self.buffer.extend(rows)
        if len(self.buffer) > self.max_buffer_rows:
            # The store has been failing for a long time; dropping the oldest keeps the process
            # alive. Loud, because it is data loss.
            drop = len(self.buffer) - self.max_buffer_rows
            del self.buffer[:drop]
            self.dropped_rows += drop
            log.error("ledger store unwritable: dropped %d oldest unflushed rows", drop)

    def take(self) -> list[dict]:
        """Hand the buffered rows to a writer (see write); `restore` them if it fails."""
        rows, self.buffer = self.buffer, []
        return rows

    def restore(self, rows: list[dict]) -> None:
        self.buffer[:0] = rows

    def write(self, rows: list[dict]) -> None:
        """Write rows as one Parquet part per day. Blocking I/O (the actor runs it in a thread).
        Raises FlushError carrying the rows of the days not written."""
        by_day: dict[str, list[dict]] = {}
        for r in rows:
            by_day.setdefault(periods(r["ts"])[0], []).append(r)
        written: set[str] = set()
        try:
            for day, part in by_day.items():
                d = f"{self.root}/date={day}"
                name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
                self.fs.makedirs(d, exist_ok=True)
                tmp, final = f"{d}/.{name}.tmp", f"{d}/{name}"
                with self.fs.open(tmp, "wb") as f:
                    pq.write_table(rows_to_table(part), f, compression="zstd")
                self.fs.mv(tmp, final)
                written.add(day)
                self.flushed_rows += len(part)
        except Exception as e:
            # Days already written must not be written twice; only the rest is retried.
            raise FlushError([r for day, part in by_day.items() if day not in written for r in part]) from e

    def flush(self) -> int:
        """Synchronous flush (no actor): write everything buffered, keep it on failure."""
        if self.fs is None or not self.buffer:
            return 0
        rows = self.take()
        try:
            self.write(rows)
        except FlushError as e:
            self.restore(e.unwritten)
            raise
        return len(rows)

    # -- reading -------------------------------------------------------------------------
    def _files(self, since: datetime | None) -> list[str]:
        """The stored files to read: compacted day files plus parts no day file covers."""
        if self.fs is None:
            return []
        return visible_files(self.fs, self.root, None if since is None else since.strftime("%Y-%m-%d"))

    def _read(self, since: datetime | None, columns: list[str] | None = None) -> pa.Table:
        # A compaction may delete parts between the listing and the read: list again once.
        for attempt in (0, 1):
            try:
                return read_files(self.fs, self._files(since), columns, since)
            except FileNotFoundError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def unflushed(self) -> list[dict]:
        """A copy of the rows not in the store yet (take it on the thread that appends)."""
        return list(self.memory) + list(self.buffer)

    def table(self, since: datetime | None = None, *, stored_only: bool = False,
              mem: list[dict] | None = None, columns: list[str] | None = None) -> pa.Table:
        parts = [self._read(since, columns)] if self.fs is not None else []
        if mem is None:
            mem = [] if stored_only else self.unflushed()
        if mem:
            m = rows_to_table(mem)
            if since is not None:
                if since.tzinfo is None:
                    since = since.replace(tzinfo=timezone.utc)
                m = m.filter(pc.greater_equal(m["ts"], pa.scalar(since, type=LEDGER_SCHEMA.field("ts").type)))
            parts.append(m.select(columns) if columns else m)
        if not parts:
            t = LEDGER_SCHEMA.empty_table()
            return t.select(columns) if columns else t
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def query(self, group_by: str, since: datetime | None = None, *, mem: list[dict] | None = None) -> list[dict]:
        if group_by not in GROUP_COLUMNS:
            raise ValueError(f"group_by must be one of {sorted(GROUP_COLUMNS)}, not {group_by!r}")
        cols = [GROUP_COLUMNS[group_by], "tokens_in", "tokens_out", "tokens_cached", "cost_usd", "estimated",
                "status"]
        return aggregate(self.table(since, mem=mem, columns=cols), group_by)

    def series(self, column: str, since: datetime | None, bucket: str = "day", *,
               mem: list[dict] | None = None) -> list[dict]:
        """Spend over time per `column` value (the dashboard's charts). Idle replica time counts
        no requests; by key or route it is the `(idle replica time)` group."""
        t = self.table(since, mem=mem, columns=["ts", column, "cost_usd", "status"])
        if t.num_rows and column in ("key_id", "route"):
            # idle replica time is spend no key or route made: its own line, labelled as in
            # `thawline usage` (/v1/usage), so the dashboard's total is the usage report's
            idle = pc.equal(t["status"], "idle")
            t = t.set_column(1, column, pc.if_else(idle, pa.scalar(IDLE_GROUP), t[column]))
        return spend_over_time(t, column, bucket)

    def activity(self, since: datetime | None, recent_n: int = 50, *, mem: list[dict] | None = None) -> dict:
        """Per-route latency / TTFT percentiles and the newest requests (the dashboard; activity.py)."""
        return summarize(self.table(since, mem=mem, columns=ACTIVITY_COLUMNS), recent_n)

    def quarantined(self) -> list[str]:
        """Ledger files moved aside because they did not read as Parquet (compaction.quarantine)."""
        return quarantined(self.fs, self.root) if self.fs is not None else []

    def compact(self, now: datetime, *, include_today: bool) -> list[str]:
        """Compact closed days (and today, with `include_today`) into day files (compaction.py)."""
        if self.fs is None:
            return []
        return compact(self.fs, self.root, today=periods(now)[0], include_today=include_today)

    def load_totals(self, now: datetime) -> None:
        """Rebuild this month's spend from the store (budgets survive restarts): per-day totals
        from the day files' footers, plus the uncompacted parts; bounded by days, not rows."""
        if self.fs is None:
            return
        month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        for day, sums in month_totals(self.fs, self.root, month_start):
            self.totals.merge({(scope, p): usd for scope, usd in sums.items() for p in (day, day[:7])})
