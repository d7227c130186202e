"""Snapshot on first boot: decide what a starting replica boots from.

- `snapshot_url` given: restore it.
- `model_source` + `snapshot_store`: if the first-boot snapshot (deterministic id, see
  args.first_boot_ref) is committed, restore it. Otherwise this replica boots vLLM once
  from the source: if it wins the store's exclusive claim of the id, its workers write their
  ranks while loading, the snapshot is committed once the engine is up, and the same engine
  serves (engine_host.EngineHost.start, spec "capture"). Of two replicas booting at once exactly
  one writes; the other serves from the source without writing.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from serve_apps.llm.args import LLMAppArgs, first_boot_ref

log = logging.getLogger("thawline.serve")


def committed_snapshot(args: LLMAppArgs) -> str | None:
    """URL of the snapshot to restore, or None when it has to be made first."""
    if args.snapshot_url:
        return args.snapshot_url
    from snapshots.errors import SnapshotNotFound
    from snapshots.store import SnapshotStore

    name, sid = first_boot_ref(args)
    store = SnapshotStore(args.snapshot_store)
    try:
        return store.resolve(f"{name}/{sid}").url  # committed snapshots only
    except SnapshotNotFound:
        return None


def local_source(source: str) -> str:
    """A local dir holding the HF checkpoint: the source itself, or a node-local copy of a
    remote fsspec source (fetched once per node into the snapshot cache dir)."""
    if "://" not in source or source.startswith("file://"):
        return source.removeprefix("file://")
    import fsspec

    from snapshots.cache import default_cache_dir

    dest = default_cache_dir() / "sources" / hashlib.sha1(source.encode()).hexdigest()[:16]
    done = dest / ".complete"
    if not done.is_file():
        fs, path = fsspec.core.url_to_fs(source)
        dest.mkdir(parents=True, exist_ok=True)
        for f in fs.ls(path, detail=False):
            if fs.isfile(f):
                fs.get(f, str(dest / Path(f).name))
        done.write_text(source)
    return str(dest)
