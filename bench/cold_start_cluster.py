"""bench/cold_start.py's view of the cluster: what it waits on between cold starts (apps at zero,
engine nodes gone, warm pools settled), the timed request, and when an engine node joined.

Every wait is bounded; nothing here asserts (timings only).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from bench.cold_start_apps import ENGINE_RESOURCES
from testkit.fake_cluster import engine_nodes


def deployment_replicas(app: str) -> int:
    """Replicas of the app's engine deployment (thawline: LLMServer; baseline: LLMServer:<model>).
    The ingresses are not counted: thawline's router is always on, and the baseline's ingress,
    once up, stays up for its long default downscale delay."""
    from ray import serve

    st = serve.status().applications.get(app)
    if st is None:
        return -1
    return sum(sum(n for s, n in d.replica_states.items())
               for name, d in st.deployments.items() if name.startswith("LLMServer"))


def wait_zero(app: str, timeout: float = 300) -> None:
    wait_until(lambda: deployment_replicas(app) == 0, timeout, f"{app} to scale to zero")


def wait_no_engine_nodes(timeout: float = 300) -> None:
    wait_until(lambda: not _engine_node_ids(), timeout, "the engine nodes to go away")


def wait_until(cond, timeout: float, what: str) -> None:
    """Poll `cond` every 0.25 s until it is true; RuntimeError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def ttft(url: str, t0: float | None = None, headers: dict | None = None) -> float:
    """Seconds from sending a streamed completion (at perf_counter `t0`, default now) to its
    first content chunk."""
    import httpx

    t0 = time.perf_counter() if t0 is None else t0
    with httpx.stream("POST", url, timeout=900, headers=headers, json={"model": "tiny", "prompt": "Hello world!", "max_tokens": 4,
                                                     "temperature": 0, "stream": True}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.read()[:500]!r}")
        first = None
        for line in r.iter_lines():  # read to the end: the request completes normally
            if first is None and line.startswith("data:") and '"text"' in line:
                first = time.perf_counter() - t0
        if first is not None:
            return first
    raise RuntimeError(f"{url}: stream ended without a token")


def settle_pools(max_wait_s: float) -> dict | None:
    """Let every live node's warm pool finish importing (it refills after each claim), as it would
    on an idle node between cold starts. Bounded: a pool that never fills shows in the breakdown's
    `host`. Returns the stats of the last pool seen, None where no node has a pool."""
    import ray

    from gateway.names import NAMESPACE, warm_pool_name

    deadline = time.monotonic() + max_wait_s
    stats = None
    while True:
        pending = False
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            try:
                pool = ray.get_actor(warm_pool_name(node["NodeID"]), namespace=NAMESPACE)
                stats = ray.get(pool.stats.remote(), timeout=30)
            except (ValueError, ray.exceptions.RayError):
                continue  # no pool on this node (yet), or it went away with its node
            pending |= stats["ready"] < stats["size"] or stats.get("pending", 0) > 0
        if not pending or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def downloads_since(cache_root: Path, t_wall: float) -> list[str]:
    """Snapshot downloads into the node caches under `cache_root` (one per node in the `node`
    scenario) from wall time `t_wall` on, as "<who> <seconds> s": whether the replica's restore
    still fetched from S3 itself, or a node prefetch had done it."""
    from snapshots.cache import FETCH_LOG, SnapshotCache

    return [f"{d.get('by') or '?'} {d['seconds']:.2f} s" for log in sorted(cache_root.glob(f"**/{FETCH_LOG}"))
            for d in SnapshotCache(log.parent).downloads() if d["t"] >= t_wall]


def last_cold_start(port: int, app: str = "thawline") -> dict:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/{app}/thawline/state", timeout=30).json()["last_cold_start"] or {}


class NodeWatch:
    """Polls the GCS node table from a thread: seconds from `t0` (perf_counter) until a new live
    engine node is registered. Started just before a cold request, stopped after it."""

    def __init__(self, t0: float, interval_s: float = 0.1) -> None:
        self.t0, self.interval_s = t0, interval_s
        self.before = _engine_node_ids()
        self.node_start: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if _engine_node_ids() - self.before:
                    self.node_start = time.perf_counter() - self.t0
                    return
            except Exception:  # noqa: BLE001 - a failed poll is retried; the bench reports None
                pass
            self._stop.wait(self.interval_s)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.node_start


def _engine_node_ids() -> set[str]:
    return {n["NodeID"] for r in ENGINE_RESOURCES for n in engine_nodes(r)}
