"""The node's verified copy of an adapter: what a serving engine loads (vLLM's lora_path).

    <cache_root>/adapters/<store-key>/<model>/<name>/<push-id>/adapter_config.json
                                                              /adapter_model.safetensors

<store-key> is the snapshot cache's (snapshots/cache.py store_key); <cache_root> defaults to the
node cache dir (default_cache_dir). The push id in the path ties the copy to one push: a name
removed and pushed again gets a new dir. Files are downloaded into a temp dir next to it, their
sizes and xxh3_64 checked against adapter.json, then the dir is renamed into place, so a reader
sees the whole adapter or none. A later fetch of a complete copy downloads nothing (sizes checked).
Also for file:// stores: the copy is small, and the engine gets one layout everywhere.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from filelock import FileLock

from snapshots import fsutil
from snapshots.cache import default_cache_dir, fsync_dir, store_key

from .errors import AdapterCorrupt
from .layout import adapter_rel
from .record import AdapterInfo
from .transfer import download, write_checked


def adapter_cache_root(cache_dir=None) -> Path:
    """The node cache dir adapters are copied under (`cache_dir`, else default_cache_dir())."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


def local_dir(cache_root, store_url: str, info: AdapterInfo) -> Path:
    return Path(cache_root) / "adapters" / store_key(store_url) / info.model / info.name / info.push_id


def is_complete(path: Path, info: AdapterInfo) -> bool:
    """Every file of `info` is in `path` with its recorded size."""
    try:
        return all((path / rel).stat().st_size == f["nbytes"] for rel, f in info.files.items())
    except OSError:
        return False


def fetch_to_cache(store, info: AdapterInfo, cache_root, *, progress: Callable[[int], None] | None = None) -> Path:
    """The local dir of `info` (a committed adapter of `store`), downloading it when it is not
    there complete. AdapterCorrupt (naming the adapter and the file) leaves nothing behind."""
    dst = local_dir(cache_root, store.url, info)
    if is_complete(dst, info):
        return dst
    locks = Path(cache_root) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    # hashed: store key, model, name and push id together can pass the 255-byte file name limit
    digest = hashlib.sha256(str(dst.relative_to(cache_root)).encode()).hexdigest()[:24]
    lock = locks / f"adapter-{digest}.lock"
    with FileLock(str(lock)):
        if is_complete(dst, info):  # another process fetched it while this one waited
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{info.push_id}.tmp-", dir=dst.parent))
        try:
            _download_checked(store, info, tmp, progress)
            _install(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            _prune_empty(dst.parent, Path(cache_root) / "adapters")
    return dst


# Adapters up to this size are read whole, every file at once (one GET each, no HEAD, concurrent:
# fsutil.read_whole): an adapter's cold load on S3 is mostly round trips.
WHOLE_READ_MAX_BYTES = 64 << 20


def _download_checked(store, info: AdapterInfo, tmp: Path, progress) -> None:
    remote = fsutil.join(store.root, adapter_rel(info.model, info.name), info.push_id)
    paths = {rel: fsutil.join(remote, rel) for rel in info.files}
    whole = None
    if sum(f["nbytes"] for f in info.files.values()) <= WHOLE_READ_MAX_BYTES:
        whole = fsutil.read_whole(store.fs, list(paths.values()))
    for rel, want in info.files.items():
        where = f"adapter {info.name!r} of {info.model!r} ({info.url}): {rel}"
        try:
            if whole is None:
                got = download(store.fs, paths[rel], tmp / rel, progress)
            else:
                got = write_checked(whole[paths[rel]], tmp / rel, progress)  # read_whole answers every path
        except FileNotFoundError:
            raise AdapterCorrupt(f"{where} is missing from push {info.push_id}") from None
        if got != want:
            raise AdapterCorrupt(f"{where} does not match adapter.json: {got['nbytes']} bytes, checksum "
                                 f"{got['checksum']}; expected {want['nbytes']} bytes, checksum {want['checksum']}")
    fsync_dir(tmp)


def _install(tmp: Path, dst: Path) -> None:
    """Rename the checked dir into place; a broken copy already there (a truncated or edited
    file) is moved aside first. Runs under the adapter's lock."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dst, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, dst)
    fsync_dir(dst.parent)


def _prune_empty(path: Path, stop: Path) -> None:
    """Remove `path` and its parents up to (not including) `stop` while they are empty: a failed
    first fetch leaves no dirs behind."""
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent

