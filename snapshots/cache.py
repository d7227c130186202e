"""Node-local cache tier: a remote snapshot is fetched once per node, validated, then reused.

    SnapshotCache(cache_dir=None).ensure(snapshot_url, ranks=None) -> local snapshot dir

Cache dir: argument, else $THAWLINE_CACHE_DIR, else $XDG_CACHE_HOME/thawline, else ~/.cache/thawline.
$THAWLINE_CACHE_DIR may hold `{node_id}`, replaced by $THAWLINE_NODE_ID: nodes that share one
disk (a fake multi-node cluster on one machine) then still get one cache each. snapshots/ knows
nothing of Ray, so whoever runs on a Ray node sets THAWLINE_NODE_ID (serve_apps/llm/node_cache.py).
Layout: <cache>/snapshots/<store-key>/<model>/<id>/ mirrors the store layout, so the cached copy
is itself a file:// snapshot that restore reads in place. snapshot.json is written last there too.

Concurrency: filelock per (snapshot, component). Two processes fetching the same snapshot: one
fetches, the other blocks on the lock and then finds the files complete. Ranks lock separately so
the TP workers of one node fetch their own ranks in parallel. A local (file://) snapshot is never
copied. Every download is appended to <cache>/fetches.jsonl with $THAWLINE_FETCH_BY (who asked:
a node prefetch, a replica's restore), so "did this restore download anything" has an answer.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

from . import fsutil
from .errors import SnapshotCorrupt, SnapshotIOError
from .format import MANIFEST, SNAPSHOT_JSON, SnapshotMeta
from .paths import local_join
from .store import ResolvedSnapshot, SnapshotStore

FETCH_CHUNK = 32 << 20
FETCH_THREADS = 8
_DONE_DIR = ".thawline-cache"
FETCH_LOG = "fetches.jsonl"
NODE_ID_ENV = "THAWLINE_NODE_ID"
FETCH_BY_ENV = "THAWLINE_FETCH_BY"
NODE_ID_FIELD = "{node_id}"
CACHE_DIR_ENV = "THAWLINE_CACHE_DIR"  # may hold NODE_ID_FIELD


def expand_node_id(template: str, node_id: str | None = None) -> str:
    """`template` with `{node_id}` replaced by `node_id` (default: $THAWLINE_NODE_ID). A template
    whose node is unknown is an error: a literal `{node_id}` directory would be one cache shared
    by every node, the very thing the placeholder exists to prevent."""
    if NODE_ID_FIELD not in template:
        return template
    node_id = node_id or os.environ.get(NODE_ID_ENV)
    if not node_id:
        raise ValueError(f"THAWLINE_CACHE_DIR={template!r} needs the node id but {NODE_ID_ENV} is not set in "
                         f"this process (it is set on Ray nodes by the serve app); pass a cache dir instead")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", node_id):
        raise ValueError(f"{NODE_ID_ENV}={node_id!r} is not a node id")
    return template.replace(NODE_ID_FIELD, node_id)


def default_cache_dir(node_id: str | None = None) -> Path:
    """This node's cache dir (module doc); `node_id` fills a `{node_id}` in $THAWLINE_CACHE_DIR
    (default: $THAWLINE_NODE_ID). The one resolver: the CLI's per-node listing calls it too."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(expand_node_id(env, node_id))
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "thawline" if xdg else Path.home() / ".cache" / "thawline"


def store_key(store_url: str) -> str:
    """The store's dir name in the cache (snapshots/ and adapters/ both): readable and
    collision-free, '<protocol>-<slug>-<hash8>'."""
    digest = hashlib.sha256(store_url.encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", store_url.split("://", 1)[-1]).strip("_")[-48:]
    proto = store_url.split("://", 1)[0] if "://" in store_url else "file"
    return f"{proto}-{slug}-{digest}"


_store_key = store_key  # the name older callers and tests import


@dataclass
class CacheResult:
    path: Path  # local snapshot dir
    fetched: bool  # this call downloaded something (False: everything was already cached, or local)
    bytes: int  # bytes downloaded by this call
    seconds: float


class SnapshotCache:
    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()

    def ensure(self, snapshot_url: str, ranks: list[int] | None = None, *, storage_options: dict | None = None,
               progress: Callable[[int], None] | None = None) -> Path:
        return self.fetch(snapshot_url, ranks, storage_options=storage_options, progress=progress).path

    def local_path(self, store_url: str, model: str, snapshot_id: str) -> Path:
        return self.dir / "snapshots" / _store_key(store_url) / model / snapshot_id

    def fetch(self, snapshot_url: str, ranks: list[int] | None = None, *, storage_options: dict | None = None,
              progress: Callable[[int], None] | None = None) -> CacheResult:
        t0 = time.perf_counter()
        store, ref = SnapshotStore.for_snapshot(snapshot_url, storage_options)
        if store.is_local:
            return CacheResult(Path(store.resolve(ref).path), False, 0, time.perf_counter() - t0)
        return self._fetch(store, store.load(ref), ranks, progress, t0)

    def fetch_resolved(self, store: SnapshotStore, snap: ResolvedSnapshot, ranks: list[int] | None = None, *,
                       progress: Callable[[int], None] | None = None) -> CacheResult:
        """fetch() of a snapshot already resolved and read (SnapshotStore.load): its snapshot.json
        is not read again; the copy is tied to exactly `snap.raw_meta`."""
        t0 = time.perf_counter()
        if store.is_local:
            return CacheResult(Path(snap.ref.path), False, 0, time.perf_counter() - t0)
        return self._fetch(store, snap, ranks, progress, t0)

    def _fetch(self, store: SnapshotStore, snap: ResolvedSnapshot, ranks: list[int] | None, progress,
               t0: float) -> CacheResult:
        # snap.meta went through parse_meta, which also rejects unsafe paths (absolute, '..'):
        # every one is joined onto `local`.
        r, raw_meta, meta = snap.ref, snap.raw_meta, snap.meta
        wanted = list(range(meta.tp_size)) if ranks is None else sorted(set(ranks))
        for rank in wanted:
            meta.rank_info(rank)  # RankOutOfRange
        local = self.local_path(store.url, r.model, r.snapshot_id)
        locks = self.dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        (local / _DONE_DIR).mkdir(parents=True, exist_ok=True)
        lock_base = f"{_store_key(store.url)}--{r.model}--{r.snapshot_id}"
        fetched_bytes = 0
        with FileLock(str(locks / f"{lock_base}.common.lock")):
            if not self._valid_common(local, raw_meta, meta):
                files = [MANIFEST, *meta.files]
                fetched_bytes += self._download(store, r.path, r.url, local, files, progress)
                self._mark(local, "common", raw_meta)
        for rank in wanted:
            with FileLock(str(locks / f"{lock_base}.rank-{rank}.lock")):
                if not self._valid_rank(local, raw_meta, meta, rank):
                    files = [p.path for p in meta.ranks[rank].parts]
                    fetched_bytes += self._download(store, r.path, r.url, local, files, progress)
                    self._check_sizes(local, meta, rank)
                    self._mark(local, f"rank-{rank}", raw_meta)
        with FileLock(str(locks / f"{lock_base}.common.lock")):
            # The cache copy's own commit marker, written after its first complete rank.
            target = local / SNAPSHOT_JSON
            if not target.exists() or target.read_bytes() != raw_meta:
                fsutil.write_atomic(fsutil.url_to_fs("file://" + str(local))[0], str(target), raw_meta)
        seconds = time.perf_counter() - t0
        if fetched_bytes:
            self._log_fetch(r.url, fetched_bytes, seconds)
        return CacheResult(local, fetched_bytes > 0, fetched_bytes, seconds)

    def _log_fetch(self, url: str, nbytes: int, seconds: float) -> None:
        """One line per download: a short O_APPEND write, so concurrent fetchers never interleave."""
        line = json.dumps({"t": time.time(), "pid": os.getpid(), "by": os.environ.get(FETCH_BY_ENV, ""),
                           "snapshot_url": url, "bytes": nbytes, "seconds": round(seconds, 3)}) + "\n"
        fd = os.open(str(self.dir / FETCH_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def downloads(self, by: str | None = None) -> list[dict]:
        """The downloads recorded in this cache dir, oldest first; only those made under
        $THAWLINE_FETCH_BY == `by` when given."""
        try:
            lines = (self.dir / FETCH_LOG).read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash mid-write: the others still count
            if by is None or rec.get("by") == by:
                out.append(rec)
        return out

    def discard(self, snapshot_url: str, ranks: list[int], *, storage_options: dict | None = None) -> None:
        """Forget the cached copy of `ranks` and of the shared files (manifest, engine files), so
        the next fetch downloads them again. For a copy found corrupt after it was marked
        complete (a flipped bit on disk, an edit): without this, every later restore would fail
        on the same bad bytes. Only the markers go; the re-fetch replaces each file by rename, so
        a process still reading (or mapping) the old file keeps its bytes."""
        store, ref = SnapshotStore.for_snapshot(snapshot_url, storage_options)
        model, sid = ref.split("/")
        if store.is_local:
            return
        local = self.local_path(store.url, model, sid)
        lock_base = f"{_store_key(store.url)}--{model}--{sid}"
        locks = self.dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        for name in ["common", *[f"rank-{r}" for r in ranks]]:
            with FileLock(str(locks / f"{lock_base}.{name}.lock")):
                self._marker(local, name).unlink(missing_ok=True)

    # ---- validation --------------------------------------------------------------------------
    @staticmethod
    def _marker(local: Path, name: str) -> Path:
        return local / _DONE_DIR / f"{name}.done"

    def _mark(self, local: Path, name: str, raw_meta: bytes) -> None:
        digest = hashlib.sha256(raw_meta).hexdigest()
        fs = fsutil.url_to_fs("file://" + str(local))[0]
        fsutil.write_atomic(fs, str(self._marker(local, name)), json.dumps({"meta_sha256": digest}).encode())

    def _marked(self, local: Path, name: str, raw_meta: bytes) -> bool:
        try:
            data = json.loads(self._marker(local, name).read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        # The id is immutable once committed, but it can be deleted and re-committed: the marker
        # ties the cached files to this exact snapshot.json.
        return data.get("meta_sha256") == hashlib.sha256(raw_meta).hexdigest()

    def _valid_common(self, local: Path, raw_meta: bytes, meta: SnapshotMeta) -> bool:
        return self._marked(local, "common", raw_meta) and all(
            local_join(local, f, where=str(local / SNAPSHOT_JSON)).is_file() for f in [MANIFEST, *meta.files])

    def _valid_rank(self, local: Path, raw_meta: bytes, meta: SnapshotMeta, rank: int) -> bool:
        if not self._marked(local, f"rank-{rank}", raw_meta):
            return False
        try:
            self._check_sizes(local, meta, rank)
        except SnapshotCorrupt:
            return False
        return True

    @staticmethod
    def _check_sizes(local: Path, meta: SnapshotMeta, rank: int) -> None:
        for p in meta.ranks[rank].parts:
            f = local_join(local, p.path, where=str(local / SNAPSHOT_JSON))
            size = f.stat().st_size if f.exists() else -1
            if size != p.nbytes:
                raise SnapshotCorrupt(f"cached {f} has {size} bytes, expected {p.nbytes}", rank=rank)

    # ---- download ----------------------------------------------------------------------------
    @staticmethod
    def _download(store, remote_dir: str, remote_url: str, local: Path, files: list[str], progress) -> int:
        """Parallel ranged GETs into `<file>.partial`, renamed into place when complete.

        Complete means: every byte written (write_all loops on short writes and raises on none,
        naming the file), the size on disk equal to the store's, and the file fsynced. Only then
        the rename, and only after all renames the caller's completion marker. Any failure
        removes the partial files and leaves no marker, so the next fetch starts over.
        """
        opened: dict[str, int] = {}
        sizes: dict[str, int] = {}
        dsts: dict[str, Path] = {}
        ok = False
        try:
            jobs = []
            for rel in files:
                src = fsutil.join(remote_dir, rel)
                opened[rel], sizes[rel], dsts[rel] = _open_partial(store, src, local, rel, remote_url)
                jobs += [(rel, src, start, min(sizes[rel], start + FETCH_CHUNK))
                         for start in range(0, sizes[rel], FETCH_CHUNK)]

            def one(job) -> int:
                rel, src, start, end = job
                data = store.fs.cat_file(src, start=start, end=end)
                if len(data) != end - start:
                    raise SnapshotCorrupt(f"{remote_url}/{rel}: short read at byte {start}")
                fsutil.write_all(opened[rel], data, start, str(dsts[rel]) + ".partial")
                if progress:
                    progress(len(data))
                return len(data)

            with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
                list(pool.map(one, jobs))
            for rel, fd in opened.items():
                _check_and_sync(fd, sizes[rel], str(dsts[rel]) + ".partial")
            ok = True
        finally:
            for fd in opened.values():
                os.close(fd)
            if not ok:
                _remove_partials(dsts.values())
        for rel in files:
            os.replace(str(dsts[rel]) + ".partial", dsts[rel])
        for parent in {d.parent for d in dsts.values()}:
            fsync_dir(parent)  # the renames survive a crash before the marker is written
        return sum(sizes.values())


def _open_partial(store, src: str, local: Path, rel: str, remote_url: str) -> tuple[int, int, Path]:
    """(fd, size, dst) for `rel`: `<dst>.partial` created empty, the remote file's size reserved."""
    try:
        size = store.fs.size(src)
    except FileNotFoundError:
        raise SnapshotCorrupt(f"{remote_url}: {rel} is missing from the snapshot", rank=None) from None
    dst = local_join(local, rel, where=f"{remote_url}/{SNAPSHOT_JSON}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = str(dst) + ".partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _reserve(fd, size, partial)
    except BaseException:  # the caller's cleanup only knows files this returned
        os.close(fd)
        _remove_partials([dst])
        raise
    return fd, size, dst


def _check_and_sync(fd: int, size: int, partial: str) -> None:
    on_disk = os.fstat(fd).st_size
    if on_disk != size:
        raise SnapshotIOError(f"{partial}: {on_disk} bytes on disk after download, expected {size}")
    try:
        os.fsync(fd)
    except OSError as exc:
        raise SnapshotIOError(f"{partial}: fsync failed: {exc.strerror or exc}") from exc


def _remove_partials(dsts) -> None:
    for dst in dsts:
        try:
            os.unlink(str(dst) + ".partial")
        except FileNotFoundError:
            pass


def _reserve(fd: int, size: int, name: str) -> None:
    """Allocate the file's blocks up front, so a full disk fails here, before any transfer,
    with ENOSPC naming the file. Filesystems without fallocate just skip the reservation."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        raise SnapshotIOError(f"{name}: cannot reserve {size} bytes: {exc.strerror or exc}") from exc


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
