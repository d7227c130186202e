"""Ledger compaction (gateway/costs/compaction.py) on real fsspec stores: same totals before and
after, a crash between the compacted write and the deletes never double counts, start-up totals
come from footers."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from gateway.costs import compaction
from gateway.costs.compaction import compact_day, day_dirs, spend_over_time, visible_files
from gateway.costs.ledger import Ledger
from gateway.costs.schema import LedgerRow

T0 = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)


def _row(key="k1", route="chat", model="m", cost=0.5, ts=T0) -> dict:
    return LedgerRow(key_id=key, route=route, target="openai", model=model, tokens_in=10, tokens_out=5,
                     ts=ts, cost_usd=cost, pricing="table").to_dict()


@pytest.fixture(params=["file", "memory"])
def url(request, tmp_path):
    return f"file://{tmp_path}/ledger" if request.param == "file" else f"memory://ledger-{uuid.uuid4().hex}"


def _fill(led: Ledger) -> None:
    """Three flushes on day 10, two on day 11 (one hour into it)."""
    for i in range(3):
        led.append([_row(key=f"k{i % 2}", cost=0.25 * (i + 1), ts=T0 + timedelta(minutes=i)),
                    _row(key="k1", route="emb", cost=0.1, ts=T0 + timedelta(minutes=i))])
        led.flush()
    for i in range(2):
        led.append([_row(key="k2", cost=1.0, ts=T0 + timedelta(hours=13, minutes=i))])
        led.flush()


def _state(led: Ledger, since=None) -> dict:
    return {g: {r["group"]: (r["requests"], round(r["cost_usd"], 9)) for r in led.query(g, since)}
            for g in ("key", "route", "model")}


def _totals(url: str, now: datetime) -> dict:
    fresh = Ledger(url)
    fresh.load_totals(now)
    return {k: round(v, 9) for k, v in fresh.totals.usd.items()}


def test_compaction_keeps_totals_and_leaves_one_file_per_day(url):
    led = Ledger(url)
    _fill(led)
    assert len(led._files(None)) == 5
    before, since_before = _state(Ledger(url)), _state(Ledger(url), T0 + timedelta(minutes=1))
    totals_before = _totals(url, T0 + timedelta(days=1))
    # closed day 10 only (today = day 11, not included)
    out = led.compact(T0 + timedelta(days=1), include_today=False)
    assert len(out) == 1 and "/date=2026-05-10/day-" in out[0]
    assert len(led._files(None)) == 3
    led.compact(T0 + timedelta(days=1), include_today=True)
    files = led._files(None)
    assert len(files) == 2 and all("/day-" in f for f in files)
    assert _state(Ledger(url)) == before
    assert _state(Ledger(url), T0 + timedelta(minutes=1)) == since_before
    assert _totals(url, T0 + timedelta(days=1)) == totals_before
    assert totals_before[("key:k2", "2026-05-11")] == 2.0 and totals_before[("route:chat", "2026-05")] == 3.5


def test_compacting_again_absorbs_new_parts_and_the_old_day_file(url):
    led = Ledger(url)
    _fill(led)
    led.compact(T0, include_today=True)
    led.append([_row(key="k9", cost=2.0, ts=T0 + timedelta(minutes=30))])
    led.flush()
    before = _state(Ledger(url))
    led.compact(T0, include_today=True)
    d = dict(day_dirs(led.fs, led.root))["2026-05-10"]
    assert [f.rsplit("/", 1)[-1][:4] for f in led.fs.ls(d, detail=False)] == ["day-"]
    assert _state(Ledger(url)) == before
    assert _totals(url, T0)[("key:k9", "2026-05")] == 2.0


def test_crash_between_write_and_delete_never_double_counts(url, monkeypatch):
    led = Ledger(url)
    _fill(led)
    before = _state(Ledger(url))
    totals_before = _totals(url, T0)

    real_rm = led.fs.rm

    def crash(path, *a, **kw):
        if "/.day-" in str(path):          # memory:// renames by copy + rm of the temp name
            return real_rm(path, *a, **kw)
        raise OSError("killed before the inputs were deleted")

    monkeypatch.setattr(led.fs, "rm", crash)
    d = dict(day_dirs(led.fs, led.root))["2026-05-10"]
    with pytest.raises(OSError):
        compact_day(led.fs, d)
    monkeypatch.undo()
    names = [f.rsplit("/", 1)[-1] for f in led.fs.ls(d, detail=False)]
    assert sum(n.startswith("part-") for n in names) == 3 and sum(n.startswith("day-") for n in names) == 1
    assert len(visible_files(led.fs, led.root, "2026-05-10")) == 1 + 2   # day file + day 11's parts
    assert _state(Ledger(url)) == before
    assert _totals(url, T0) == totals_before
    # the next compaction cleans up the covered leftovers and still counts each row once
    led.append([_row(key="k1", cost=0.5, ts=T0 + timedelta(minutes=5))])
    led.flush()
    compact_day(led.fs, d)
    assert [f.rsplit("/", 1)[-1][:4] for f in led.fs.ls(d, detail=False)] == ["day-"]
    after = _state(Ledger(url))
    assert after["key"]["k1"] == (before["key"]["k1"][0] + 1, before["key"]["k1"][1] + 0.5)


def test_a_half_written_compaction_is_invisible(url):
    led = Ledger(url)
    _fill(led)
    before = _state(Ledger(url))
    d = dict(day_dirs(led.fs, led.root))["2026-05-10"]
    with led.fs.open(f"{d}/.day-1-deadbeef.parquet.tmp", "wb") as f:
        f.write(b"PAR1 half a file")
    assert _state(Ledger(url)) == before


def test_startup_totals_read_footers_not_rows(url, monkeypatch):
    led = Ledger(url)
    _fill(led)
    led.compact(T0 + timedelta(days=1), include_today=True)
    expected = _totals(url, T0 + timedelta(days=1))
    calls = []
    real = compaction.read_files

    def spy(fs, files, *a, **kw):
        calls.append(list(files))
        return real(fs, files, *a, **kw)

    monkeypatch.setattr(compaction, "read_files", spy)
    assert _totals(url, T0 + timedelta(days=1)) == expected
    assert all(c == [] for c in calls)          # no data file read: only the day files' footers


def test_concurrent_compaction_between_listing_and_read_is_retried(url, monkeypatch):
    led = Ledger(url)
    _fill(led)
    before = _state(Ledger(url))
    reader = Ledger(url)
    real = reader._files
    state = {"n": 0}

    def files_then_compact(since):
        out = real(since)
        if state["n"] == 0:
            led.compact(T0 + timedelta(days=1), include_today=True)   # deletes what `out` lists
        state["n"] += 1
        return out

    monkeypatch.setattr(reader, "_files", files_then_compact)
    assert _state(reader) == before


def test_spend_over_time_buckets():
    led = Ledger(None)
    led.append([_row(cost=1.0), _row(cost=2.0, ts=T0 + timedelta(hours=1)),
                _row(key="k2", cost=4.0, ts=T0 + timedelta(days=1))])
    t = led.table()
    assert spend_over_time(t, "key_id") == [
        {"bucket": "2026-05-10", "group": "k1", "cost_usd": 3.0, "requests": 2},
        {"bucket": "2026-05-11", "group": "k2", "cost_usd": 4.0, "requests": 1}]
    assert [r["bucket"] for r in spend_over_time(t, "key_id", "hour")] == [
        "2026-05-10T12:00", "2026-05-10T13:00", "2026-05-11T12:00"]
