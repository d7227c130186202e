"""`thawline status`: Serve apps with replica counts (zero included), cold/warm state, and the
snapshots cached on every node.

Gathering touches Ray (a driver connection, one tiny task pinned to each alive node); the
`derive_state` and `scan_cache_dir` parts are pure and unit-testable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.names import LLM_SERVER_DEPLOYMENT, NAMESPACE, READINESS_ACTOR
from gateway.readiness import COLD, WARM, WARMING
from snapshots.format import SNAPSHOT_JSON


@dataclass
class DeploymentRow:
    app: str
    app_status: str
    deployment: str
    status: str
    running: int
    starting: int
    other: int
    state: str  # cold | warming | warm
    route_prefix: str | None = None
    # an LLM app's tier (gateway/readiness.TIERS): how its next request is answered:
    # warm | parked (a parked engine, at once) | cached (an engine starts from a snapshot) | cold
    tier: str | None = None


@dataclass
class CachedSnapshot:
    node: str
    path: str  # relative to the node's cache dir
    bytes: int


@dataclass
class StatusReport:
    serve_running: bool
    rows: list[DeploymentRow] = field(default_factory=list)
    caches: list[CachedSnapshot] = field(default_factory=list)
    cache_dirs: dict[str, str] = field(default_factory=dict)  # node -> cache dir scanned
    notes: list[str] = field(default_factory=list)


def derive_state(replica_states: dict[str, int], board: dict[str, Any] | None) -> str:
    """cold/warming/warm. The readiness board (reported by LLM replicas themselves, so a replica
    Serve calls RUNNING while its engine still restores shows as warming) wins when it knows of
    live replicas; the board answers "cold" for apps it has never heard of (the gateway, the LLM
    router), so "cold" from it falls back to Serve's replica states."""
    if board and board.get("state") in (WARMING, WARM):
        return str(board["state"])
    if replica_states.get("RUNNING", 0) > 0:
        return WARM
    if any(replica_states.get(s, 0) > 0 for s in ("STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION")):
        return WARMING
    return COLD


def scan_cache_dir(cache_dir: str, max_depth: int = 6) -> list[tuple[str, int]]:
    """(relative dir, bytes) of every cached snapshot: a dir holding snapshot.json (the commit marker)."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= max_depth:
            dirnames[:] = []
        if SNAPSHOT_JSON in filenames:
            total = 0
            for d, _, files in os.walk(dirpath):
                for f in files:
                    try:
                        total += os.path.getsize(os.path.join(d, f))
                    except OSError:
                        pass
            found.append((str(Path(dirpath).relative_to(root)), total))
            dirnames[:] = []  # a snapshot's own subdirs are not snapshots
    return sorted(found)


def _node_cache_listing() -> tuple[str, str, list[tuple[str, int]]]:
    import ray

    from snapshots.cache import default_cache_dir  # the one resolver (its store imports stay off the CLI's start)

    # this node's id fills a `{node_id}` in THAWLINE_CACHE_DIR, as in the replicas on this node
    cache_dir = str(default_cache_dir(node_id=ray.get_runtime_context().get_node_id()))
    return ray.util.get_node_ip_address(), cache_dir, scan_cache_dir(cache_dir)


def gather(ray_address: str | None, *, timeout_s: float = 30.0) -> StatusReport:
    from cluster.cli.ops.ray_connect import use_token_auth_if_available

    use_token_auth_if_available()  # before Ray reads its auth config
    import ray
    from ray import serve
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init(address=ray_address or "auto", namespace=NAMESPACE, log_to_driver=False,
                 logging_level="ERROR")
    report = StatusReport(serve_running=True)
    try:
        status = serve.status()
    except Exception as exc:  # noqa: BLE001 - Serve not started is reported, not fatal
        report.serve_running = False
        report.notes.append(f"Serve is not running ({type(exc).__name__})")
        status = None

    board = None
    try:
        board = ray.get_actor(READINESS_ACTOR, namespace=NAMESPACE)
    except ValueError:
        report.notes.append("no readiness board: cold/warm derived from replica states")

    if status is not None:
        for app_name, app in sorted(status.applications.items()):
            board_state = None
            if board is not None:
                try:
                    board_state = ray.get(board.get.remote(app_name), timeout=timeout_s)
                except Exception as exc:  # noqa: BLE001
                    report.notes.append(f"readiness board: {type(exc).__name__} for {app_name}")
            for dep_name, dep in sorted(app.deployments.items()):
                states = {str(getattr(k, "value", k)): int(v) for k, v in (dep.replica_states or {}).items()}
                running = states.get("RUNNING", 0)
                starting = states.get("STARTING", 0)
                report.rows.append(DeploymentRow(
                    app=app_name, app_status=str(getattr(app.status, "value", app.status)),
                    deployment=dep_name, status=str(getattr(dep.status, "value", dep.status)),
                    running=running, starting=starting,
                    other=sum(states.values()) - running - starting,
                    state=derive_state(states, board_state if isinstance(board_state, dict) else None),
                    tier=(board_state.get("tier") if isinstance(board_state, dict) and dep_name == LLM_SERVER_DEPLOYMENT
                          else None),
                ))

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [ray.remote(_node_cache_listing).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes]
    for ip, cache_dir, items in ray.get(refs, timeout=timeout_s):
        report.cache_dirs[ip] = cache_dir
        report.caches.extend(CachedSnapshot(ip, rel, nbytes) for rel, nbytes in items)
    return report
