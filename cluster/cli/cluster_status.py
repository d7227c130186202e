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


def ray_failure(rc: int, stdout: str, stderr: str, cluster_name: str | None) -> str:
    """One line for a failed `ray exec ... ray status`: a cluster that is not up says so (Ray's
    own answer is a RuntimeError traceback); otherwise the last error-looking line Ray printed."""
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    if any("Head node of cluster" in ln and "not found" in ln for ln in lines):
        who = f"cluster {cluster_name}" if cluster_name else "the cluster"
        return f"{who} is not running (no head node found); start it with `thawline cluster up CONFIG`"
    errors = [ln for ln in lines if "Error" in ln.split(":")[0] or ln.lower().startswith("error")]
    tail = (errors or lines or ["no output"])[-1]
    return f"`ray exec` failed with exit code {rc}: {tail}"
