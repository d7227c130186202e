"""Restore engine: one rank's tensors from a snapshot, as zero-copy views of one buffer.

    restore(snapshot_url, rank) -> RestoredRank(tensors, meta, timings)
    restore_resolved(store, snap, rank) -> the same, for a snapshot already resolved and read

Orchestration only: resolve `<model>/latest` and read snapshot.json once (store.load); fetch
through the node-local cache when the store is remote (snapshots/cache.py), discarding and
re-fetching a cached copy that went bad on this node's disk; read only this rank's manifest rows;
then the leaf rank I/O (snapshots/rankio.py) reads the rank into one buffer, optionally re-hashes
every tensor, and hands out views of the buffer (or of one device copy of it).

Host-resident consumers that already have the rank's files locally (CPU engines) use the host
path instead, snapshots/maprank.py: tensors as copy-on-write views of the part files, no buffer.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from .cache import SnapshotCache
from .errors import SnapshotCorrupt
from .format import SnapshotMeta
from .rankio import RestoreTimings, read_rank
from .store import ResolvedSnapshot, SnapshotRef, SnapshotStore

log = logging.getLogger(__name__)


@dataclass
class RestoredRank:
    rank: int
    url: str  # resolved snapshot URL (never .../latest)
    meta: SnapshotMeta
    tensors: dict  # name -> torch.Tensor, views of `buffer`
    buffer: object  # the one torch.uint8 buffer (host, or device when device= was given)
    timings: RestoreTimings


def restore(snapshot_url: str, rank: int, *, verify: bool = True, threads: int | None = None,
            device: str | None = None, use_cache: bool = True, storage_options: dict | None = None,
            cache_dir: str | None = None, progress: Callable[[int], None] | None = None) -> RestoredRank:
    """Restore `rank` of `<store>/<model>/<id|latest>`.

    Remote stores go through the node-local cache (fetching only this rank's files) unless
    use_cache=False, which reads ranges straight from the store.
    """
    import torch  # noqa: F401 - imported before the clock starts: import time is not restore time

    t0 = time.perf_counter()
    store, ref = SnapshotStore.for_snapshot(snapshot_url, storage_options)
    return _restore(store, store.load(ref), rank, t0, verify=verify, threads=threads, device=device,
                    use_cache=use_cache, cache_dir=cache_dir, progress=progress)


def restore_resolved(store: SnapshotStore, snap: ResolvedSnapshot, rank: int, *, verify: bool = True,
                     threads: int | None = None, device: str | None = None, use_cache: bool = True,
                     cache_dir: str | None = None, progress: Callable[[int], None] | None = None) -> RestoredRank:
    """restore() of a snapshot already resolved and read (SnapshotStore.load): snapshot.json is
    not read again, neither from the store nor from the node-local cache copy."""
    import torch  # noqa: F401 - imported before the clock starts: import time is not restore time

    return _restore(store, snap, rank, time.perf_counter(), verify=verify, threads=threads, device=device,
                    use_cache=use_cache, cache_dir=cache_dir, progress=progress)


def _restore(store: SnapshotStore, snap: ResolvedSnapshot, rank: int, t0: float, *, verify: bool,
             threads: int | None, device: str | None, use_cache: bool, cache_dir: str | None,
             progress: Callable[[int], None] | None) -> RestoredRank:
    meta = snap.meta

    def read(st: SnapshotStore, ref: SnapshotRef):
        meta.rank_info(rank)  # RankOutOfRange before any manifest I/O
        rows = st.read_manifest(ref, rank)
        return read_rank(st.fs, ref.path, meta, rank, rows, verify=verify, threads=threads, device=device,
                         progress=progress)

    fetch_s, cached = 0.0, False
    if use_cache and not store.is_local:
        cache = SnapshotCache(cache_dir)
        res = cache.fetch_resolved(store, snap, ranks=[rank])
        fetch_s, cached = res.seconds, not res.fetched
        # The copy is a file:// snapshot whose snapshot.json is exactly snap.raw_meta.
        local, local_ref = SnapshotStore.for_snapshot(res.path.as_uri())
        local_ref = local.ref(*local_ref.split("/"))
        try:
            tensors, buf, timings = read(local, local_ref)
        except SnapshotCorrupt as exc:
            if res.fetched:
                raise  # fresh from the store: the store's copy is what is corrupt
            # A copy marked complete earlier went bad on this node's disk: fetch it again once.
            log.warning("thawline: cached copy of rank %d of %s is corrupt (%s); fetching it again", rank, snap.url, exc)
            cache.discard(snap.url, [rank], storage_options=store.storage_options)
            res = cache.fetch_resolved(store, snap, ranks=[rank])
            fetch_s, cached = fetch_s + res.seconds, False
            tensors, buf, timings = read(local, local_ref)
    else:
        tensors, buf, timings = read(store, snap.ref)
    timings.fetch_s = fetch_s
    timings.cached = cached
    timings.seconds = time.perf_counter() - t0
    timings.gbps = timings.bytes / timings.seconds / 1e9 if timings.seconds > 0 else 0.0
    return RestoredRank(rank=rank, url=snap.url, meta=meta, tensors=tensors, buffer=buf, timings=timings)
