"""The ledger under corruption and a second compactor, on real stores (file:// and memory://):
an unreadable part is moved aside and named, the rest is read and the day still compacts; two
compactions of one day never count it twice. No Ray."""
from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from gateway.costs.compaction import QUARANTINE, compact_day, day_dirs
from gateway.costs.ledger import Ledger
from gateway.costs.schema import LedgerRow

T0 = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=1)


def _row(cost: float, minute: int, key: str = "k1") -> dict:
    return LedgerRow(key_id=key, route="chat", target="openai", model="m", tokens_in=10, tokens_out=5,
                     ts=T0 + timedelta(minutes=minute), cost_usd=cost, pricing="table").to_dict()


@pytest.fixture(params=["file", "memory"])
def url(request, tmp_path):
    return f"file://{tmp_path}/ledger" if request.param == "file" else f"memory://ledger-{uuid.uuid4().hex}"


def _fill(led: Ledger, usd: list[float]) -> None:
    for i, c in enumerate(usd):
        led.append([_row(c, i)])
        led.flush()


def _total(url: str) -> float:
    return round(sum(r["cost_usd"] for r in Ledger(url).query("key")), 9)


def _month_total(url: str) -> float:
    led = Ledger(url)
    led.load_totals(NOW)
    return round(led.totals.get("key:k1", "2026-05"), 9)


def _parts(led: Ledger) -> list[str]:
    (_, d), = day_dirs(led.fs, led.root)
    return sorted(str(p) for p in led.fs.ls(d, detail=False) if str(p).rsplit("/", 1)[-1].startswith("part-"))


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"PAR1" + b"\0" * 40 + b"PAR1",
                                    lambda b: b""], ids=["truncated", "garbage", "empty"])
def test_an_unreadable_part_is_quarantined_and_the_rest_counts(url, damage, caplog):
    led = Ledger(url)
    _fill(led, [10.0, 20.0, 5.0])
    bad = _parts(led)[1]
    led.fs.pipe_file(bad, damage(led.fs.cat_file(bad)))
    with caplog.at_level(logging.WARNING):
        assert _total(url) == 15.0                       # the $20 part is out; the rest counts
    assert any(bad in r.getMessage() for r in caplog.records), caplog.text
    moved = Ledger(url).quarantined()
    assert len(moved) == 1 and moved[0].endswith(bad.rsplit("/", 1)[-1]) and f"/{QUARANTINE}/" in moved[0]
    assert _month_total(url) == 15.0                     # start-up totals read too
    (_, d), = day_dirs(led.fs, led.root)
    assert compact_day(led.fs, d) is not None            # that day still compacts
    assert _total(url) == 15.0 and _month_total(url) == 15.0


def test_an_unreadable_day_file_is_quarantined_too(url):
    led = Ledger(url)
    _fill(led, [10.0, 20.0])
    (_, d), = day_dirs(led.fs, led.root)
    day = compact_day(led.fs, d)
    _fill(led, [5.0])
    led.fs.pipe_file(day, led.fs.cat_file(day)[:100])
    _fill(led, [1.0])
    assert compact_day(led.fs, d) is not None            # the first pass finds and moves it
    assert _total(url) == 6.0 and _month_total(url) == 6.0
    assert [p.rsplit("/", 1)[-1] for p in Ledger(url).quarantined()] == [day.rsplit("/", 1)[-1]]


def test_two_compactions_of_one_day_count_it_once(url):
    """Two compactors that both read the same parts (two clusters on one ledger URL) each write a
    day file covering them: readers and the next compaction count those parts once."""
    led = Ledger(url)
    _fill(led, [10.0, 15.0, 5.0])
    (_, d), = day_dirs(led.fs, led.root)
    twin = d.replace("date=", "twin-date=")              # the other compactor's view of the same parts
    led.fs.makedirs(twin, exist_ok=True)
    for p in _parts(led):
        led.fs.copy(p, f"{twin}/{p.rsplit('/', 1)[-1]}")
    mine, theirs = compact_day(led.fs, d), compact_day(led.fs, twin)
    led.fs.copy(theirs, f"{d}/{theirs.rsplit('/', 1)[-1]}")
    led.fs.rm(twin, recursive=True)
    assert mine != theirs and _total(url) == 30.0 and _month_total(url) == 30.0   # the bug: 60
    _fill(led, [1.0])
    assert compact_day(led.fs, d) is not None
    assert _total(url) == 31.0 and _month_total(url) == 31.0


def test_racing_compactors_never_double_count(url):
    for rnd in range(8):
        led = Ledger(f"{url}/r{rnd}")
        _fill(led, [10.0, 15.0, 5.0])
        (_, d), = day_dirs(led.fs, led.root)
        gate = threading.Barrier(2)
        errors = []

        def run():
            gate.wait()
            try:
                compact_day(Ledger(f"{url}/r{rnd}").fs, d)
            except FileNotFoundError:
                pass       # its inputs were compacted away under it: the other one holds them
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        ts = [threading.Thread(target=run) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert not errors, errors
        assert _total(f"{url}/r{rnd}") == 30.0 and _month_total(f"{url}/r{rnd}") == 30.0


def test_usage_ui_and_cli_name_the_quarantined_file(url):
    """/v1/usage lists the file moved aside, /ui still renders, `thawline usage` warns about it
    (against a live gateway on loopback, the CLI's real path)."""
    import hashlib

    import httpx
    from typer.testing import CliRunner

    from cluster.cli.main import app as cli
    from gateway.app import Gateway
    from gateway.config import parse_config
    from gateway.costs.pricing import PriceBook
    from gateway.costs.tracker import CostTracker
    from testkit.asgi_server import serve_asgi

    led = Ledger(url)
    _fill(led, [10.0, 20.0, 5.0])
    bad = _parts(led)[0]
    led.fs.pipe_file(bad, b"not parquet")
    admin = "adm"
    cfg = parse_config({"providers": {"oa": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"}},
                        "routes": {"chat": {"targets": [{"provider": "oa", "model": "m"}]}},
                        "server": {"admin_key_sha256": hashlib.sha256(admin.encode()).hexdigest()}})
    gw = Gateway(cfg, limits=None, costs=CostTracker(PriceBook(), ledger=Ledger(url)))
    with serve_asgi(gw) as base:
        r = httpx.get(f"{base}/v1/usage?group_by=key", headers={"authorization": f"Bearer {admin}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert round(sum(x["cost_usd"] for x in body["data"]), 6) == 25.0
        assert [p.rsplit("/", 1)[-1] for p in body["quarantined"]] == [bad.rsplit("/", 1)[-1]]
        assert httpx.get(f"{base}/ui", headers={"authorization": f"Bearer {admin}"}).status_code == 200
        res = CliRunner().invoke(cli, ["usage", "--group-by", "key", "--base-url", f"{base}/v1",
                                       "--admin-key", admin])
        assert res.exit_code == 0, res.output
        assert bad.rsplit("/", 1)[-1] in res.output and "moved aside" in res.output
