"""Ledger compaction: the many small flush parts of a day become one `day-*.parquet` (no Ray).

Layout under the ledger URL (hive-style, one directory per UTC day):

    date=YYYY-MM-DD/part-<ms>-<rand>.parquet     one per flush (ledger.Ledger.write)
    date=YYYY-MM-DD/day-<ms>-<rand>.parquet      a compacted file

A compacted file's Parquet footer carries two key-value entries:
  `thawline.covers`  JSON list of the file names (in the same directory) whose rows it holds,
                     transitively (an older day file it absorbed, and what that one covered);
  `thawline.totals`  JSON {scope: usd} of its rows ("key:<id>" / "route:<alias>" /
                     "adapter:<route>:<adapter>"), so start-up
                     rebuilds a month's budget totals from at most one footer per day.

Two compactions of one day (two clusters on one ledger URL, or a restarted actor racing its
predecessor) may both write a day file covering the same parts. Readers therefore also hide a day
file whose coverage another visible day file's coverage contains (equal coverage: the
lexicographically first name wins), so every part counts once whichever compactions ran.

A file that does not read as Parquet (truncated, corrupt) is moved aside to
`_quarantine/date=YYYY-MM-DD/<name>` (readers, Hive-style tools included, skip `_` paths) with a
warning naming it; the rest of the day is read and compacted as usual.

Atomicity: the compacted file is written under a dot-name (readers skip dot-names) and renamed
(one PUT on object stores); only then are its inputs deleted. Readers drop every file a visible
day file covers, so a crash between the rename and the deletes never double counts, and the next
compaction absorbs the leftovers. One writer per ledger URL (the ledger actor) compacts.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from gateway.adapters import adapter_scope
from gateway.costs.budget import LOCAL
from gateway.costs.usage import LEDGER_SCHEMA

log = logging.getLogger(__name__)

COVERS_KEY = b"thawline.covers"
TOTALS_KEY = b"thawline.totals"
DAY_PREFIX = "day-"
PART_PREFIX = "part-"
QUARANTINE = "_quarantine"


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def day_dirs(fs, root: str, since_day: str | None = None) -> list[tuple[str, str]]:
    """(day, directory) of every `date=` directory, oldest first, from `since_day` on."""
    if not fs.exists(root):
        return []
    out = []
    for d in fs.ls(root, detail=False):
        base = _base(d)
        if base.startswith("date=") and (since_day is None or base[5:] >= since_day):
            out.append((base[5:], d.rstrip("/")))
    return sorted(out)


def footer_meta(fs, path: str) -> dict[bytes, bytes]:
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow.metadata or {}


def quarantine(fs, path: str, why: object) -> str:
    """Move an unreadable ledger file aside (never deleted: an operator may recover rows from it)."""
    d, name = path.rsplit("/", 1)
    root, day = d.rsplit("/", 1)
    dest = f"{root}/{QUARANTINE}/{day}/{name}"
    fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(path, dest)
    log.warning("ledger: %s is not readable Parquet (%s); moved aside to %s, the rest is read",
                path, str(why).splitlines()[0] if str(why) else type(why).__name__, dest)
    return dest


def quarantined(fs, root: str) -> list[str]:
    """Every file moved aside so far."""
    try:
        return sorted(map(str, fs.find(f"{root}/{QUARANTINE}")))
    except FileNotFoundError:
        return []


def _day_files(fs, d: str) -> dict[str, tuple[frozenset[str], dict] | None]:
    """{name: (what it covers, its totals) for day files, None for parts} of one directory; a day
    file whose footer does not read is quarantined."""
    names = [_base(f) for f in fs.ls(d, detail=False)]
    out: dict[str, tuple[frozenset[str], dict] | None] = {}
    for n in names:
        if not n.endswith(".parquet") or n.startswith("."):
            continue
        if not n.startswith(DAY_PREFIX):
            out[n] = None
            continue
        path = f"{d}/{n}"
        try:
            meta = footer_meta(fs, path)
        except FileNotFoundError:
            continue                  # compacted away since the listing
        except (OSError, ValueError):
            err = _broken(fs, path, lambda f: pq.ParquetFile(f).schema_arrow)
            if err is not None:
                quarantine(fs, path, err)
                continue
            meta = footer_meta(fs, path)      # it reads now: that was a passing store error
        out[n] = (frozenset(json.loads(meta.get(COVERS_KEY, b"[]"))), json.loads(meta.get(TOTALS_KEY, b"{}")))
    return out


def _winners(files: dict) -> list[str]:
    """The day files that count: none covered by another, and of day files whose coverage another's
    contains (two compactions of one day), only the larger (equal: the first name)."""
    days = {n: c[0] for n, c in files.items() if c is not None}
    covered = set().union(*days.values()) if days else set()
    kept: list[str] = []
    for n in sorted((n for n in days if n not in covered), key=lambda n: (-len(days[n]), n)):
        if not any(days[n] <= days[k] for k in kept):
            kept.append(n)
    return kept


def day_state(fs, d: str) -> tuple[list[str], list[str], dict[str, dict]]:
    """(visible part files, visible day files, {day file: its totals}) of one day directory.
    A file that a visible day file covers is not visible (see module doc)."""
    files = _day_files(fs, d)
    kept = _winners(files)
    covered = set().union(*(files[n][0] for n in kept)) if kept else set()
    days = sorted(f"{d}/{n}" for n in kept)
    parts = sorted(f"{d}/{n}" for n, c in files.items() if c is None and n not in covered)
    return parts, days, {f"{d}/{n}": files[n][1] for n in kept}


def visible_files(fs, root: str, since_day: str | None = None) -> list[str]:
    out: list[str] = []
    for _, d in day_dirs(fs, root, since_day):
        parts, days, _ = day_state(fs, d)
        out += days + parts
    return out


def scope_totals(table: pa.Table) -> dict[str, float]:
    """{"key:<id>": usd, "route:<alias>": usd, "adapter:<route>:<adapter>": usd} of the rows
    (zero-cost groups left out), and the accelerator-priced part of each under budget.LOCAL + scope."""
    out: dict[str, float] = {}
    if table.num_rows == 0:
        return out
    local = (table.filter(pc.equal(table["pricing"], "local"))
             if "pricing" in table.column_names else table.slice(0, 0))
    for t, mark in ((table, ""), (local, LOCAL)):
        for col, prefix in (("key_id", "key:"), ("route", "route:")):
            agg = t.select([col, "cost_usd"]).group_by(col).aggregate([("cost_usd", "sum")])
            for name, usd in zip(agg[col].to_pylist(), agg["cost_usd_sum"].to_pylist()):
                if usd:
                    out[mark + prefix + name] = usd
        if "adapter" in t.column_names:
            agg = t.select(["route", "adapter", "cost_usd"]).group_by(["route", "adapter"]).aggregate(
                [("cost_usd", "sum")])
            for route, adapter, usd in zip(agg["route"].to_pylist(), agg["adapter"].to_pylist(),
                                           agg["cost_usd_sum"].to_pylist()):
                if usd and adapter is not None:
                    out[mark + adapter_scope(route, adapter)] = usd
    return out


def _broken(fs, path: str, read) -> Exception | None:
    """The error of `read(file)` when it fails twice in a row (a corrupt file fails every time; one
    failed read of a store may be the network), else None. A missing file is not broken, and a
    PermissionError (the store's settings, not the file) is raised."""
    err = None
    for _ in range(2):
        try:
            with fs.open(path, "rb") as f:
                read(f)
            return None
        except FileNotFoundError:
            return None
        except PermissionError:
            raise
        except (OSError, ValueError) as e:    # pyarrow: ArrowInvalid is a ValueError, IO an OSError
            err = e
    return err


def _unreadable(fs, files: list[str]) -> list[tuple[str, Exception]]:
    """The files of `files` that do not read as Parquet, each with its error."""
    errs = [(p, _broken(fs, p, pq.read_table)) for p in files]
    return [(p, e) for p, e in errs if e is not None]


def read_files(fs, files: list[str], columns: list[str] | None = None,
               since: datetime | None = None, *, moved: list[str] | None = None) -> pa.Table:
    """The rows of `files` as one table (pyarrow.dataset: column projection, ts filter). A file
    that does not read is quarantined (appended to `moved`) and the rest is read."""
    if not files:
        t = LEDGER_SCHEMA.empty_table()
        return t.select(columns) if columns else t
    flt = None
    if since is not None:
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        flt = ds.field("ts") >= pa.scalar(since, type=LEDGER_SCHEMA.field("ts").type)
    try:
        return ds.dataset(files, schema=LEDGER_SCHEMA, format="parquet", filesystem=fs).to_table(
            columns=columns, filter=flt)
    except FileNotFoundError:
        raise                  # a listing raced a compaction: the caller lists again
    except (OSError, ValueError) as e:
        bad = _unreadable(fs, files)
        if not bad:
            raise e
    for p, err in bad:
        quarantine(fs, p, err)
        if moved is not None:
            moved.append(_base(p))
    return read_files(fs, [p for p in files if p not in {b for b, _ in bad}], columns, since, moved=moved)


def compact_day(fs, d: str, *, min_inputs: int = 2) -> str | None:
    """Compact one day directory into a single day file. Returns its path, or None when there
    was nothing to do (fewer than `min_inputs` visible files). Leftovers of an earlier crash
    (files covered by a visible day file) are deleted first."""
    names = {_base(f) for f in fs.ls(d, detail=False)}
    parts, days, _ = day_state(fs, d)
    visible = {_base(p) for p in parts + days}
    stale = [n for n in names if n.endswith(".parquet") and not n.startswith(".") and n not in visible]
    stale += [n for n in names if n.startswith(f".{DAY_PREFIX}") and n.endswith(".tmp")]   # a crashed write
    for n in stale:                                     # covered by a day file already: safe to drop
        try:
            fs.rm(f"{d}/{n}")
        except FileNotFoundError:
            pass                                        # quarantined by day_state, or another compactor
    inputs = days + parts
    if len(inputs) < min_inputs:
        return None
    moved: list[str] = []
    table = read_files(fs, inputs, moved=moved).sort_by("ts")
    inputs = [p for p in inputs if _base(p) not in moved]
    covers = set()
    for p in (p for p in inputs if _base(p).startswith(DAY_PREFIX)):
        covers |= set(json.loads(footer_meta(fs, p).get(COVERS_KEY, b"[]")))
    covers |= {_base(p) for p in inputs}
    meta = {COVERS_KEY: json.dumps(sorted(covers)).encode(),
            TOTALS_KEY: json.dumps(scope_totals(table)).encode()}
    table = table.replace_schema_metadata(meta)
    name = f"{DAY_PREFIX}{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
    tmp, final = f"{d}/.{name}.tmp", f"{d}/{name}"
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=256_000)
    fs.mv(tmp, final)
    for p in inputs:                                    # a crash here: readers skip what `final` covers
        try:
            fs.rm(p)
        except FileNotFoundError:
            pass
    return final


def compact(fs, root: str, *, today: str, include_today: bool, min_inputs: int = 2) -> list[str]:
    """Compact every closed day (before `today`) and, with `include_today`, today too."""
    done = []
    for day, d in day_dirs(fs, root):
        if day > today or (day == today and not include_today):
            continue
        try:
            out = compact_day(fs, d, min_inputs=min_inputs)
        except Exception:
            log.exception("ledger compaction of %s failed; its files stay as they are", d)
            continue
        if out is not None:
            done.append(out)
    return done


def month_totals(fs, root: str, month_start: datetime) -> list[tuple[str, dict[str, float]]]:
    """(day, {scope: usd}) for every day from `month_start`: day files from their footers, the
    (few, uncompacted) parts read. Work is bounded by the days and the parts, not by rows."""
    out = []
    for day, d in day_dirs(fs, root, month_start.strftime("%Y-%m-%d")):
        if day[:7] != month_start.strftime("%Y-%m"):
            continue
        parts, _, totals = day_state(fs, d)
        sums: dict[str, float] = {}
        for t in totals.values():
            for k, v in t.items():
                sums[k] = sums.get(k, 0.0) + v
        for k, v in scope_totals(read_files(fs, parts, ["key_id", "route", "cost_usd", "pricing", "adapter"])).items():
            sums[k] = sums.get(k, 0.0) + v
        out.append((day, sums))
    return out


def spend_over_time(table: pa.Table, dim: str, bucket: str = "day") -> list[dict]:
    """[{bucket, group, cost_usd, requests}] (for the dashboard): spend per day (or hour) per `dim`."""
    if table.num_rows == 0:
        return []
    unit = "hour" if bucket == "hour" else "day"
    # idle replica-time rows are spend, not requests
    req = (pc.not_equal(table["status"], "idle").cast(pa.int64()) if "status" in table.column_names
           else pa.array([1] * table.num_rows, pa.int64()))
    t = pa.table({"b": pc.floor_temporal(table["ts"], unit=unit), "g": table[dim], "c": table["cost_usd"], "r": req})
    agg = t.group_by(["b", "g"]).aggregate([("c", "sum"), ("r", "sum")])
    rows = [{"bucket": b.strftime("%Y-%m-%d" if unit == "day" else "%Y-%m-%dT%H:00"), "group": g,
             "cost_usd": c, "requests": n}
            for b, g, c, n in zip(agg["b"].to_pylist(), agg["g"].to_pylist(), agg["c_sum"].to_pylist(),
                                  agg["r_sum"].to_pylist())]
    rows.sort(key=lambda r: (r["bucket"], str(r["group"])))
    return rows
