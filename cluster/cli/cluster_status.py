"""`thawline cluster status --json`: the resolved config's shape plus `ray status` parsed.

`ray status` has no machine-readable output, so its text is parsed into the sections a script
needs (active / pending nodes, recent failures, resource usage, demands); the raw text is kept
too, because Ray's format is not a stable interface.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

_SECTIONS = {"active:": "active", "idle:": "idle", "pending:": "pending", "recent failures:": "failures",
             "usage:": "usage", "demands:": "demands", "total usage:": "usage", "pending demands:": "demands",
             "total demands:": "demands"}


def summary(config: Path, resolved: dict[str, Any]) -> dict[str, Any]:
    head = resolved.get("head_node_type")
    types = resolved.get("available_node_types") or {}
    return {
        "config": str(config),
        "cluster_name": resolved.get("cluster_name"),
        "provider": (resolved.get("provider") or {}).get("type"),
        "head_node_type": head,
        "worker_types": {name: {"min_workers": t.get("min_workers", 0),
                                "max_workers": t.get("max_workers", resolved.get("max_workers"))}
                         for name, t in types.items() if name != head},
        "idle_timeout_minutes": resolved.get("idle_timeout_minutes"),
    }


def parse_ray_status(text: str) -> dict[str, Any]:
    """Lines of each known section of `ray status`, "(no ...)" placeholders dropped."""
    out: dict[str, Any] = {v: [] for v in set(_SECTIONS.values())}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or set(line) <= set("=-"):
            continue
        key = line.lower()
        if key in _SECTIONS:
            current = _SECTIONS[key]
            continue
        if not raw.startswith((" ", "\t")):  # any other unindented line is a heading
            current = None
            continue
        if current and not (line.startswith("(") and line.endswith(")")):
            out[current].append(line)
    out["ray_status"] = text
    return out
