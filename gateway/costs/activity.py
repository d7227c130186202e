"""What the dashboard shows of recent requests, from ledger rows (pure pyarrow + Python).

Ledger rows carry no prompt or answer text: the request log is time, key, route, target,
status, latency, TTFT, tokens and cost. Idle replica-time rows are not requests and are left out.
"""
from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

ACTIVITY_COLUMNS = ["ts", "key_id", "route", "target", "model", "status", "latency_ms", "ttft_ms", "attempts",
                    "tokens_in", "tokens_out", "cost_usd", "stream"]
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def route_latency(rows: list[dict]) -> list[dict]:
    """Per route: requests, and latency / TTFT percentiles (ms) over its answered requests."""
    by_route: dict[str, dict[str, list]] = {}
    for r in rows:
        g = by_route.setdefault(str(r["route"]), {"n": [], "lat": [], "ttft": []})
        g["n"].append(1)
        if r["status"] == "ok":
            g["lat"].append(float(r["latency_ms"] or 0.0))
            if r["ttft_ms"] is not None:
                g["ttft"].append(float(r["ttft_ms"]))
    out = []
    for route, g in sorted(by_route.items()):
        lat, ttft = sorted(g["lat"]), sorted(g["ttft"])
        row: dict = {"route": route, "requests": len(g["n"]), "answered": len(lat)}
        for name, q in QUANTILES:
            row[f"latency_{name}_ms"] = percentile(lat, q)
            row[f"ttft_{name}_ms"] = percentile(ttft, q)
        out.append(row)
    return out


def summarize(table: pa.Table, recent_n: int = 50) -> dict:
    """{"latency": route_latency, "recent": the newest `recent_n` requests, newest first}."""
    if table.num_rows:
        table = table.filter(pc.not_equal(table["status"], "idle"))
    rows = table.select([c for c in ACTIVITY_COLUMNS if c in table.column_names]).to_pylist()
    rows.sort(key=lambda r: r["ts"])
    recent = []
    for r in reversed(rows[-recent_n:] if recent_n else []):
        recent.append({**r, "ts": r["ts"].isoformat(timespec="seconds")})
    return {"latency": route_latency(rows), "recent": recent}
