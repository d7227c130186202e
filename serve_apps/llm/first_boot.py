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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_apps.llm.args import LLMAppArgs, effective_engine_overrides, first_boot_prefix, first_boot_ref

log = logging.getLogger("thawline.serve")


@dataclass(frozen=True)
class EngineIdentity:
    """What this replica's engine would be: a snapshot made under anything else is a mismatch."""

    vllm_version: str
    overrides: dict[str, Any]
    accelerator: Any  # snapshots.vllm_engine.engine_state.AcceleratorInfo

    @property
    def digest(self) -> str:
        from snapshots.vllm_engine.engine_state import identity_digest

        return identity_digest(self.vllm_version, self.overrides, self.accelerator)


def engine_identity(args: LLMAppArgs) -> EngineIdentity:
    """Probe this node (no vLLM import, no CUDA init): vLLM version, overrides, accelerator."""
    from snapshots.vllm_engine.identity import installed_vllm_version, probe_accelerator

    return EngineIdentity(installed_vllm_version(), effective_engine_overrides(args),
                          probe_accelerator(args.tensor_parallel_size, gpu=args.accelerator == "gpu"))


class EngineMismatchRefused(RuntimeError):
    """on_engine_mismatch: refuse, and the snapshot was made under another engine (one line)."""


def recorded_engine(url: str):
    """(resolved url, vLLM version, AcceleratorInfo | None) a committed snapshot records."""
    from snapshots.vllm_engine.start import read_engine_state

    _, resolved, meta, state = read_engine_state(url)
    return resolved.url, meta.engine.version, state.accelerator


def checked_snapshot(args: LLMAppArgs, identity: EngineIdentity, url: str, version: str, accelerator) -> str:
    """`url` (a snapshot_url resolved to its committed snapshot, recording vLLM `version` and
    `accelerator`) after the identity check against this node's engine; raises
    EngineMismatchRefused. The resolved URL is what the host restores, so the snapshot checked is
    the snapshot restored even if `latest` moves meanwhile."""
    from snapshots.vllm_engine.engine_state import identity_mismatch

    version_only = identity_mismatch(where=url, snapshot_version=version, snapshot_accelerator=None,
                                     running_version=identity.vllm_version, running_accelerator=None)
    if version_only:
        raise EngineMismatchRefused(f"{version_only}; re-create it with `thawline snapshot create` under "
                                    f"vLLM {identity.vllm_version}, or use model_source + snapshot_store")
    full = identity_mismatch(where=url, snapshot_version=version, snapshot_accelerator=accelerator,
                             running_version=identity.vllm_version, running_accelerator=identity.accelerator)
    if full and args.on_engine_mismatch == "refuse":
        raise EngineMismatchRefused(f"{full} (on_engine_mismatch: refuse)")
    if full:
        log.warning("thawline: %s; restoring the weights and profiling KV cache/NCCL again", full)
    return url


def committed_snapshot(args: LLMAppArgs, identity: EngineIdentity) -> str | None:
    """URL of the snapshot to restore, or None when this replica has to make it first.

    snapshot_url: restored as given, after the identity check: another vLLM version is refused
    (its parameter layouts may differ); another accelerator is refused under `refuse`, else the
    weights are restored and the engine host profiles KV cache/NCCL again (see
    snapshots.vllm_engine.start.prepare_engine_start). First boot: the id carries the identity, so a
    replica under another version/accelerator/overrides finds no snapshot and makes its own
    (`recapture`), leaving the other one to the replicas that match it; under `refuse` it fails
    with one line naming the snapshot's engine and its own."""
    from snapshots.errors import SnapshotNotFound
    from snapshots.store import SnapshotStore
    from snapshots.vllm_engine.engine_state import identity_mismatch

    if args.snapshot_url:
        return checked_snapshot(args, identity, *recorded_engine(args.snapshot_url))

    name, sid = first_boot_ref(args, identity.digest)
    store = SnapshotStore(args.snapshot_store)
    try:
        return store.resolve(f"{name}/{sid}").url  # committed snapshots only
    except SnapshotNotFound:
        pass
    if args.on_engine_mismatch == "refuse":
        _, prefix = first_boot_prefix(args)
        for other in sorted(store._committed_ids(name)):
            if other.startswith(prefix) and other != sid:
                url, version, accelerator = recorded_engine(store.ref(name, other).url)
                line = identity_mismatch(where=url, snapshot_version=version, snapshot_accelerator=accelerator,
                                         running_version=identity.vllm_version, running_accelerator=identity.accelerator)
                raise EngineMismatchRefused(
                    (line or f"snapshot {url} was made with other engine overrides than {identity.overrides}")
                    + " (on_engine_mismatch: refuse)")
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
