"""Traffic counters of one gateway process, and their sum over every replica.

Each replica's counters (requests, answered, 5xx, fallbacks, 429s) live in its own Prometheus
registry, so a page served by one replica would show only that replica's share. Replicas hand
their cumulative counters, keyed by a per-process id, to the shared ledger actor with their ledger
rows (CostTracker.sync); the dashboard reads the sum. Cumulative per process: a replica that has
stopped keeps its last counts in the sum, a new one starts a new key. Pure (no Ray).
"""
from __future__ import annotations

import uuid
from typing import Any, Iterable

PROCESS_ID = uuid.uuid4().hex          # this process's key in the cluster-wide sum
FIELDS = ("requests", "ok", "errors", "fallbacks", "rejected_429")


def counters(registry: Any) -> dict[str, float]:
    """Traffic totals from a prometheus_client registry (this process's counters)."""
    out = dict.fromkeys(FIELDS, 0.0)
    if registry is None:
        return out
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "thawline_gateway_requests_total":
                out["requests"] += s.value
                if s.labels.get("status") == "ok":
                    out["ok"] += s.value
                elif s.labels.get("status") == "error":
                    out["errors"] += s.value
            elif s.name == "thawline_gateway_fallbacks_total":
                out["fallbacks"] += s.value
            elif s.name in ("thawline_gateway_limiter_rejections_total", "thawline_gateway_budget_rejections_total"):
                out["rejected_429"] += s.value
    return out


def total(per_process: Iterable[dict[str, float]]) -> dict[str, float]:
    out = dict.fromkeys(FIELDS, 0.0)
    for c in per_process:
        for k in FIELDS:
            out[k] += float(c.get(k, 0.0))
    return out


class TrafficBook:
    """The ledger actor's per-process counters (bounded: the newest `keep` processes)."""

    def __init__(self, keep: int = 1000) -> None:
        self.by_process: dict[str, dict[str, float]] = {}
        self.keep = keep

    def put(self, process_id: str, values: dict[str, float]) -> None:
        self.by_process.pop(process_id, None)
        self.by_process[process_id] = dict(values)
        while len(self.by_process) > self.keep:
            del self.by_process[next(iter(self.by_process))]

    def total(self) -> dict[str, Any]:
        return {**total(self.by_process.values()), "replicas": len(self.by_process)}
