"""Spend aggregation for GET /v1/usage (pure pyarrow)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from gateway.costs.schema import LEDGER_COLUMNS

IDLE_GROUP = "(idle replica time)"
# /v1/usage `group_by` -> ledger column. By adapter, the base model's requests are the `null` group.
GROUP_COLUMNS = {"key": "key_id", "route": "route", "model": "model", "target": "target", "adapter": "adapter"}
IDLE_RELABELLED = ("key", "route", "adapter")   # groups in which idle replica time is IDLE_GROUP

LEDGER_SCHEMA = pa.schema([
    ("ts", pa.timestamp("us", tz="UTC")), ("key_id", pa.string()), ("route", pa.string()),
    ("target", pa.string()), ("model", pa.string()), ("tokens_in", pa.int64()), ("tokens_out", pa.int64()),
    ("tokens_cached", pa.int64()), ("cost_usd", pa.float64()), ("latency_ms", pa.float64()),
    ("ttft_ms", pa.float64()), ("status", pa.string()), ("attempts", pa.int32()), ("estimated", pa.bool_()),
    ("stream", pa.bool_()), ("pricing", pa.string()), ("adapter", pa.string()),
])
assert tuple(LEDGER_SCHEMA.names) == LEDGER_COLUMNS


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


def aggregate(table: pa.Table, group_by: str) -> list[dict]:
    """One dict per group, most expensive first."""
    if group_by not in GROUP_COLUMNS:
        raise ValueError(f"group_by must be one of {sorted(GROUP_COLUMNS)}, not {group_by!r}")
    col = GROUP_COLUMNS[group_by]
    if table.num_rows == 0:
        return []
    t = table.select([col, "tokens_in", "tokens_out", "tokens_cached", "cost_usd", "estimated"])
    t = t.set_column(5, "estimated", t["estimated"].cast(pa.int64()))
    # Idle replica-time rows are spend, not requests: they count 0 requests, and where their
    # key/route is the placeholder "-" the group says what they are.
    idle = (pc.equal(table["status"], "idle") if "status" in table.column_names
            else pa.array([False] * table.num_rows))
    t = t.append_column("request", pc.invert(idle).cast(pa.int64()))
    if group_by in IDLE_RELABELLED:
        t = t.set_column(0, col, pc.if_else(idle, pa.scalar(IDLE_GROUP), t[col]))
    agg = t.group_by(col).aggregate([
        ("request", "sum"), ("tokens_in", "sum"), ("tokens_out", "sum"), ("tokens_cached", "sum"),
        ("cost_usd", "sum"), ("estimated", "sum")])
    out = [{"group": r[col], "requests": r["request_sum"], "tokens_in": r["tokens_in_sum"],
            "tokens_out": r["tokens_out_sum"], "tokens_cached": r["tokens_cached_sum"],
            "cost_usd": round(r["cost_usd_sum"], 10), "estimated_requests": r["estimated_sum"]}
           for r in agg.to_pylist()]
    out.sort(key=lambda d: (-d["cost_usd"], str(d["group"])))
    return out
