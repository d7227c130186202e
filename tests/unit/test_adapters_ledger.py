"""The ledger's `adapter` column: rows carry it, /v1/usage groups by it, spend totals and compacted
day files count each adapter's scope (its budget survives a restart), and Parquet files written
before the column existed still read (as the base model). No Ray."""
from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gateway.costs.budget import SpendTotals, periods
from gateway.costs.compaction import compact_day, day_dirs, footer_meta
from gateway.costs.ledger import Ledger
from gateway.costs.schema import LEDGER_COLUMNS, LedgerRow
from gateway.costs.usage import IDLE_GROUP, LEDGER_SCHEMA

NOW = datetime.now(timezone.utc)


def _row(adapter: str | None, cost: float, **kw) -> dict:
    return LedgerRow(key_id="k", route="tiny", target="local", model="tiny", cost_usd=cost, pricing="table",
                     tokens_in=3, tokens_out=2, adapter=adapter, ts=NOW, **kw).to_dict()


def _old_part(led: Ledger) -> None:
    """A part file as the ledger wrote it before `adapter` existed."""
    old = pa.schema([f for f in LEDGER_SCHEMA if f.name != "adapter"])
    row = {k: v for k, v in _row(None, 0.25).items() if k != "adapter"}
    d = f"{led.root}/date={periods(NOW)[0]}"
    led.fs.makedirs(d, exist_ok=True)
    with led.fs.open(f"{d}/part-1-old00000.parquet", "wb") as f:
        pq.write_table(pa.Table.from_pylist([row], schema=old), f)


def test_rows_and_schema_carry_the_adapter():
    assert LEDGER_COLUMNS[-1] == "adapter" and LEDGER_SCHEMA.field("adapter").nullable
    assert _row("alice-v1", 0.0)["adapter"] == "alice-v1" and _row(None, 0.0)["adapter"] is None


def test_spend_totals_count_the_adapter_scope():
    t = SpendTotals()
    t.add("k", "tiny", 2.0, NOW, adapter="alice-v1")
    t.add("k", "tiny", 1.0, NOW, local=True, adapter="alice-v1")
    t.add("k", "tiny", 4.0, NOW)
    day = periods(NOW)[0]
    assert t.get("adapter:tiny:alice-v1", day) == 3.0 and t.get("local@adapter:tiny:alice-v1", day) == 1.0
    assert t.get("route:tiny", day) == 7.0


@pytest.mark.parametrize("compacted", [False, True], ids=["parts", "day-file"])
def test_old_files_read_and_adapter_spend_survives_a_restart(tmp_path, compacted):
    url = f"file://{tmp_path}/ledger"
    led = Ledger(url)
    _old_part(led)
    led.append([_row("alice-v1", 1.5), _row("alice-v1", 0.5), _row("bob-v1", 0.25), _row(None, 0.125)])
    led.flush()
    if compacted:
        (_, d), = day_dirs(led.fs, led.root)
        out = compact_day(led.fs, d)
        assert out is not None and b"adapter:tiny:alice-v1" in footer_meta(led.fs, out)[b"thawline.totals"]
    fresh = Ledger(url)
    by = {g["group"]: g for g in fresh.query("adapter")}
    assert by["alice-v1"]["requests"] == 2 and by["alice-v1"]["cost_usd"] == pytest.approx(2.0)
    assert by[None]["requests"] == 2 and by[None]["cost_usd"] == pytest.approx(0.375)   # the old row + a base row
    assert {g["group"] for g in fresh.query("route")} == {"tiny"}
    fresh.load_totals(NOW)
    assert fresh.totals.get("adapter:tiny:alice-v1", periods(NOW)[0]) == pytest.approx(2.0)
    assert fresh.totals.get("adapter:tiny:bob-v1", periods(NOW)[1]) == pytest.approx(0.25)
    assert fresh.totals.get("route:tiny", periods(NOW)[0]) == pytest.approx(2.625)


def test_idle_replica_time_is_its_own_group_by_adapter():
    led = Ledger(None)
    led.append([_row("alice-v1", 1.0), LedgerRow(key_id="-", route="-", target="local", model="tiny-app",
                                                 status="idle", attempts=0, cost_usd=0.5, pricing="local",
                                                 ts=NOW).to_dict()])
    by = {g["group"]: g for g in led.query("adapter")}
    assert by[IDLE_GROUP]["requests"] == 0 and by[IDLE_GROUP]["cost_usd"] == 0.5 and None not in by
