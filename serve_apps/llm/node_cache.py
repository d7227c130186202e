"""The node-local snapshot cache (snapshots/cache.py) as the serve side uses it.

    pin_node_id()                  THAWLINE_NODE_ID := this Ray process's node id
    prefetch_to_node(args, by)     body of the prewarm task pinned to a joining node
    restore_tag() / restore_downloads(tag)   what one engine start downloaded into the cache

snapshots/ knows nothing of Ray: THAWLINE_CACHE_DIR may say `{node_id}` (one cache per node when
nodes share a disk, as fake nodes do), and every process of ours that reads or fills the cache
on a Ray node (LLM replica, engine host, prefetch task) pins the node id here first. vLLM's
EngineCore and workers inherit it with the rest of the host's environment (forkserver.py).
"""
from __future__ import annotations

import itertools
import os
import threading
import time

from serve_apps.llm.args import LLMAppArgs
from snapshots.cache import FETCH_BY_ENV, NODE_ID_ENV, SnapshotCache

_starts = itertools.count()


def pin_node_id() -> str | None:
    """Set THAWLINE_NODE_ID to this process's Ray node id (None outside Ray: left as it is)."""
    import ray

    if not ray.is_initialized():
        return os.environ.get(NODE_ID_ENV)
    node = ray.get_runtime_context().get_node_id()
    os.environ[NODE_ID_ENV] = node
    return node


def prewarm_snapshot(args: LLMAppArgs) -> str | None:
    """The snapshot a replica of this app starting on this node now would restore: snapshot_url
    (after the same engine check the replica makes), or for a first-boot app its committed
    snapshot for this node's engine; None when there is none yet (the first replica makes it)."""
    from serve_apps.llm.first_boot import committed_snapshot, engine_identity

    return committed_snapshot(args, engine_identity(args))


def prefetch_to_node(args: dict, by: str) -> dict:
    """Fetch the app's snapshot into this node's cache (`latest` resolved now). Downloads are
    logged in the cache under `by`. Runs as a zero-CPU Ray task pinned to the node."""
    from snapshots.store import SnapshotStore

    started = time.time()
    node = pin_node_id()
    os.environ[FETCH_BY_ENV] = by
    url = prewarm_snapshot(LLMAppArgs.model_validate(args))
    cache = SnapshotCache()
    out = {"node_id": node, "cache_dir": str(cache.dir), "snapshot_url": None, "bytes": 0, "seconds": 0.0,
           "started_at": started}
    if url is not None:
        store, ref = SnapshotStore.for_snapshot(url)
        snap = store.load(ref)
        res = cache.fetch_resolved(store, snap)
        # The engine's own small files (config, tokenizer, compile cache) too: the replica then
        # reads nothing from the store but snapshot.json.
        from snapshots.vllm_engine.start import materialise_engine_dir

        materialise_engine_dir(snap.url)
        out.update(snapshot_url=snap.url, bytes=res.bytes, seconds=round(res.seconds, 3))
    return {**out, "done_at": time.time()}


def restore_tag() -> str:
    """Tag this process's (and its engine processes') cache downloads from here on as one engine
    start's, so the start can report what it downloaded itself."""
    tag = f"restore-{os.getpid()}-{next(_starts)}"
    os.environ[FETCH_BY_ENV] = tag
    return tag


def restore_downloads(tag: str, prefetch: threading.Thread | None, wait_s: float = 10.0) -> dict:
    """{"dir", "node_id", "downloaded_bytes"}: the bytes the engine start tagged `tag` downloaded
    into the node cache (0 when a prewarm prefetch had fetched everything already). The start's
    own prefetch thread is given `wait_s` to finish its bookkeeping first."""
    if prefetch is not None:
        prefetch.join(wait_s)
    cache = SnapshotCache()
    return {"dir": str(cache.dir), "node_id": os.environ.get(NODE_ID_ENV),
            "downloaded_bytes": sum(int(d.get("bytes", 0)) for d in cache.downloads(by=tag))}
