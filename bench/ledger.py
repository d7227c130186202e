"""Ledger read bench: `/v1/usage` over a month of ledger rows, old per-flush layout vs compacted.

    .venv/bin/python -m bench.ledger [--rows 1000000] [--days 30] [--files-per-day 288] [--dir DIR]

Writes `--rows` rows spread over `--days` UTC days as `--files-per-day` small flush parts per day
(the layout Ledger.write produces, one part per flush), then measures:
  baseline  the pre-compaction read path: list the parts, read them one by one, concat, filter,
            aggregate by key (what /v1/usage did), and the old start-up (every row of the month
            through SpendTotals.add);
  thawline  the same directory after compaction into one day file per day: Ledger.query("key")
            (pyarrow.dataset, projected columns, ts filter) and Ledger.load_totals (day footers).
The default 288 parts/day is a 5-minute flush; the default 10 s flush makes 8,640 parts/day, so
the baseline here is the kind one (kept lower so generation stays well under a minute).
Prints a table, then one JSON line last.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gateway.costs.budget import SpendTotals
from gateway.costs.ledger import Ledger
from gateway.costs.usage import LEDGER_SCHEMA, aggregate

MONTH = datetime(2026, 3, 1, tzinfo=timezone.utc)


def generate(root: Path, rows: int, days: int, files_per_day: int, seed: int = 0) -> int:
    """Write the old layout; returns the number of part files."""
    rng = np.random.default_rng(seed)
    span_us = days * 86_400_000_000
    ts = np.sort(rng.integers(0, span_us, rows)) + int(MONTH.timestamp() * 1_000_000)
    keys = np.array([f"key-{i}" for i in range(50)], dtype=object)
    routes = np.array(["chat", "fast", "embed", "local"], dtype=object)
    models = np.array(["gpt-4o-mini", "claude-3-5-haiku", "gemini-1.5-flash", "tinyllama"], dtype=object)
    ki, ri = rng.integers(0, 50, rows), rng.integers(0, 4, rows)
    tin, tout = rng.integers(10, 4000, rows), rng.integers(1, 1000, rows)
    table = pa.table({
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")), "key_id": pa.array(keys[ki], pa.string()),
        "route": pa.array(routes[ri], pa.string()), "target": pa.array(routes[ri], pa.string()),
        "model": pa.array(models[ri], pa.string()), "tokens_in": pa.array(tin), "tokens_out": pa.array(tout),
        "tokens_cached": pa.array(np.zeros(rows, np.int64)), "cost_usd": pa.array((tin * 0.15 + tout * 0.6) / 1e6),
        "latency_ms": pa.array(rng.random(rows) * 900), "ttft_ms": pa.array(rng.random(rows) * 300),
        "status": pa.array(np.full(rows, "ok", dtype=object), pa.string()),
        "attempts": pa.array(np.ones(rows, np.int32)), "estimated": pa.array(np.zeros(rows, bool)),
        "stream": pa.array(np.zeros(rows, bool)), "pricing": pa.array(np.full(rows, "table", dtype=object), pa.string()),
    }, schema=LEDGER_SCHEMA)
    day_idx = (ts - ts[0] // 86_400_000_000 * 86_400_000_000) // 86_400_000_000
    bounds = np.searchsorted(day_idx, np.arange(days + 1))
    n = 0
    for d in range(days):
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        ddir = root / f"date={(MONTH + timedelta(days=d)).strftime('%Y-%m-%d')}"
        ddir.mkdir(parents=True, exist_ok=True)
        for chunk in np.array_split(np.arange(lo, hi), files_per_day):
            if len(chunk) == 0:
                continue
            part = table.slice(int(chunk[0]), len(chunk))
            pq.write_table(part, ddir / f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet",
                           compression="zstd")
            n += 1
    return n


def old_table(root: Path, since: datetime | None) -> pa.Table:
    """The pre-compaction read: every part, one by one (Ledger.table before issue 15)."""
    parts = []
    for d in sorted(root.iterdir()):
        if since is not None and d.name[5:] < since.strftime("%Y-%m-%d"):
            continue
        for f in sorted(d.iterdir()):
            if f.suffix == ".parquet" and not f.name.startswith("."):
                parts.append(pq.read_table(f, schema=LEDGER_SCHEMA))
    t = pa.concat_tables(parts)
    if since is not None:
        t = t.filter(pc.greater_equal(t["ts"], pa.scalar(since, type=LEDGER_SCHEMA.field("ts").type)))
    return t


def old_startup(root: Path, now: datetime) -> SpendTotals:
    totals = SpendTotals()
    t = old_table(root, now.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    for r in t.select(["key_id", "route", "cost_usd", "ts"]).to_pylist():
        totals.add(r["key_id"], r["route"], r["cost_usd"], r["ts"])
    return totals


def timed(fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--files-per-day", type=int, default=288)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir, removed)")
    a = ap.parse_args()
    tmp = Path(a.dir or tempfile.mkdtemp(prefix="thawline-ledger-bench-"))
    root = tmp / "ledger"
    try:
        t0 = time.perf_counter()
        files = generate(root, a.rows, a.days, a.files_per_day)
        gen_s = time.perf_counter() - t0
        now = MONTH + timedelta(days=a.days - 1, hours=23)
        since = MONTH
        base_s, base = timed(lambda: aggregate(old_table(root, since), "key"), repeat=2)
        base_start_s, base_totals = timed(lambda: old_startup(root, now), repeat=1)
        led = Ledger(f"file://{root}")
        t0 = time.perf_counter()
        led.compact(now, include_today=True)
        compact_s = time.perf_counter() - t0
        new_s, new = timed(lambda: Ledger(f"file://{root}").query("key", since))
        def start():
            fresh = Ledger(f"file://{root}")
            fresh.load_totals(now)
            return fresh.totals
        start_s, new_totals = timed(start)
        assert {r["group"]: r["requests"] for r in new} == {r["group"]: r["requests"] for r in base}
        assert sum(r["requests"] for r in new) == a.rows
        for k, v in base_totals.usd.items():
            assert abs(new_totals.usd.get(k, 0.0) - v) < 1e-6 * max(1.0, v), k
        rows = [("rows", f"{a.rows:,}"), ("days / parts (old layout)", f"{a.days} / {files:,}"),
                ("generate (s)", f"{gen_s:.1f}"), ("compact all days (s)", f"{compact_s:.2f}"),
                ("/v1/usage baseline: per-part read (s)", f"{base_s:.3f}"),
                ("/v1/usage thawline: compacted dataset (s)", f"{new_s:.3f}"),
                ("speedup", f"{base_s / new_s:.1f}x"),
                ("start-up totals baseline: all rows (s)", f"{base_start_s:.3f}"),
                ("start-up totals thawline: day footers (s)", f"{start_s:.4f}")]
        w = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{w}}  {v:>12}")
        print(json.dumps({"bench": "ledger", "rows": a.rows, "days": a.days, "old_parts": files,
                          "baseline_usage_s": round(base_s, 4), "thawline_usage_s": round(new_s, 4),
                          "speedup": round(base_s / new_s, 2), "startup_s": round(start_s, 4),
                          "baseline_startup_s": round(base_start_s, 4), "compact_s": round(compact_s, 3)}))
    finally:
        if a.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
