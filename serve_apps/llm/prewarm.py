"""Node-join prewarm: the moment a node that can hold one of the app's replicas joins, start its
warm pool and fetch the app's snapshot into its node cache, so that the imports and the object
store transfer overlap the replica's scheduling instead of following it.

The LLM router (always on, on the head) runs a `Prewarmer`: a daemon thread polling
ray.nodes() every POLL_S. Nodes alive when it starts count as joining, so the nodes of a cluster
that is already up get the same treatment. For each joining node that fits the replica's
placement group:
- the node's warm pool (warm_pool.get_or_create_pool), when warm_pool_size > 0;
- a zero-CPU Ray task pinned to the node (NodeAffinitySchedulingStrategy, soft=False) that
  fetches the snapshot a replica would restore there now (node_cache.prefetch_to_node: `latest`
  resolved at that moment; a first-boot app's committed snapshot, if any). Skipped for snapshots
  on a local filesystem: nothing to fetch.
Each step is recorded with its time.time() on the ReadinessBoard (`record_prewarm`), which
GET /<route>/thawline/state shows under "prewarm".

This is the same on a `ray up` cluster: the watcher needs no node start command, only the router.

Pure parts (fits, group_demand, wants_prefetch, NodeWatch) import no Ray.
"""
from __future__ import annotations

import logging
import threading
import time

from serve_apps.llm.args import LLMAppArgs, placement_bundles

log = logging.getLogger("thawline.serve")

POLL_S = 0.5
_LOCAL = ("file://", "/")


def group_demand(bundles: list[dict[str, float]]) -> dict[str, float]:
    """What one node must offer to hold the whole group (STRICT_PACK: every bundle on one node)."""
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    return total


def fits(resources: dict[str, float], demand: dict[str, float]) -> bool:
    """Whether a node with these total resources can hold `demand` (zero amounts ask nothing)."""
    return all(resources.get(k, 0.0) >= v for k, v in demand.items() if v > 0)


def wants_prefetch(args: LLMAppArgs) -> bool:
    """A remote snapshot store has bytes to bring to the node; a local one is read in place."""
    where = args.snapshot_url or args.snapshot_store or ""
    return not where.startswith(_LOCAL)


class NodeWatch:
    """Tells, poll after poll, which nodes joined since the last poll and fit the demand."""

    def __init__(self, demand: dict[str, float]) -> None:
        self.demand = demand
        self._seen: set[str] = set()

    def joined(self, nodes: list[dict]) -> list[str]:
        """Node ids (from ray.nodes() entries) alive now, not seen alive before, fitting."""
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        new = [nid for nid, n in alive.items()
               if nid not in self._seen and fits(n.get("Resources") or {}, self.demand)]
        self._seen = set(alive)  # dead nodes are forgotten: node ids are never reused
        return new


class Prewarmer:
    """The watcher thread of one app's router. `start()` polls once at once, then every POLL_S."""

    def __init__(self, app_name: str, args: LLMAppArgs, board, poll_s: float = POLL_S) -> None:
        self.app_name = app_name
        self.args = args
        self.board = board
        self.poll_s = poll_s
        self.watch = NodeWatch(group_demand(placement_bundles(args)))
        self._pending: dict = {}  # prefetch ObjectRef -> node id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Prewarmer":
        self._poll_safely()
        self._thread = threading.Thread(target=self._run, name="thawline-prewarm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll_safely()

    def _poll_safely(self) -> None:
        try:
            self.poll()
        except Exception as e:  # noqa: BLE001 - a GCS hiccup must not end the watcher
            log.warning("thawline: prewarm poll failed: %s", e)

    def poll(self) -> None:
        import ray

        for node_id in self.watch.joined(ray.nodes()):
            self._prewarm(node_id)
        self._collect()

    def _record(self, node_id: str, **fields) -> None:
        self.board.record_prewarm.remote(self.app_name, node_id, fields)

    def _prewarm(self, node_id: str) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from serve_apps.llm.node_cache import prefetch_to_node
        from serve_apps.llm.warm_pool import get_or_create_pool

        self._record(node_id, node_seen=time.time())
        log.info("thawline: node %s can hold %s: prewarming it", node_id, self.app_name)
        if self.args.warm_pool_size:
            get_or_create_pool(node_id, self.args.warm_pool_size)
            self._record(node_id, pool_ensured=time.time())
        if not wants_prefetch(self.args):
            return
        ref = ray.remote(prefetch_to_node).options(
            num_cpus=0, max_retries=0, name="thawline-prefetch",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(self.args.model_dump(), f"prewarm:{self.app_name}")
        self._pending[ref] = node_id
        self._record(node_id, prefetch_started=time.time())

    def _collect(self) -> None:
        """Record the prefetches that finished (or failed: e.g. the node went away meanwhile)."""
        import ray

        if not self._pending:
            return
        done, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        for ref in done:
            node_id = self._pending.pop(ref)
            try:
                out = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - recorded; the replica then fetches itself
                log.warning("thawline: snapshot prefetch on %s failed: %s", node_id, e)
                self._record(node_id, prefetch_error=str(e)[-500:], prefetch_failed=time.time())
                continue
            self._record(node_id, prefetch_running=out["started_at"], prefetch_done=out["done_at"],
                         prefetch_bytes=out["bytes"],
                         prefetch_s=out["seconds"], snapshot_url=out["snapshot_url"], cache_dir=out["cache_dir"])
