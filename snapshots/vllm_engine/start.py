"""Start vLLM from a snapshot: the snapshot URL is all a start needs.

    prepare_engine_start(snapshot_url, **overrides) -> PreparedStart   # node + process, no engine
    start_engine(snapshot_url, async_engine=False, **overrides) -> vllm.LLM | AsyncLLM
    read_engine_state(snapshot_url) -> (store, ref, SnapshotMeta, EngineState)

prepare_engine_start resolves the snapshot and reads its snapshot.json once, checks TP size and
vLLM version before any vLLM process exists, materialises the engine dir (engine/hf, the
compile cache, NCCL files), starts the weight prefetch, and sets the process environment that
vLLM and NCCL read when the engine's processes start (VLLM_CACHE_ROOT, NCCL_TOPO_FILE,
NCCL_GRAPH_FILE): that is the only interface those libraries offer. The engine is then built
inside load_errors.engine_start_errors, so a worker's failure reason comes back as
EngineStartError. start_engine and the Serve app's EngineHost both go through these two steps.
Scripts calling them need the `if __name__ == "__main__":` guard (vLLM spawns processes).
"""
from __future__ import annotations

import io
import logging
import os
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from snapshots import fsutil
from snapshots.cache import SnapshotCache
from snapshots.pagecache import read_ahead
from snapshots.paths import safe_relpath
from snapshots.store import ResolvedSnapshot, SnapshotRef, SnapshotStore
from snapshots.vllm_engine.engine_dir import engine_dir
from snapshots.vllm_engine.engine_state import (
    ENGINE_STATE_PATH,
    EngineState,
    AcceleratorInfo,
    SnapshotMismatch,
    check_engine_version,
    check_tp_size,
    replay_machine_state,
)
from snapshots.vllm_engine.identity import probe_accelerator
from snapshots.vllm_engine.load_errors import EngineStartError, engine_start_errors  # noqa: F401 - EngineStartError re-exported
from snapshots.vllm_engine.options import LoaderOptions
from snapshots.vllm_engine.plugin import LOAD_FORMAT

log = logging.getLogger("thawline.engine")


@dataclass(frozen=True)
class PreparedStart:
    """What prepare_engine_start did to this node and process, and the engine args to start with."""

    snapshot: ResolvedSnapshot  # resolved once: never .../latest; its snapshot.json as read then
    state: EngineState  # engine/engine_state.json
    engine_dir: Path  # materialised: hf/ is kwargs["model"], vllm_cache/ is VLLM_CACHE_ROOT
    kwargs: dict  # for vllm.LLM(**kwargs) / AsyncEngineArgs(**kwargs); caller overrides applied
    env: dict  # the variables it set in os.environ (VLLM_CACHE_ROOT, NCCL_TOPO_FILE, NCCL_GRAPH_FILE)
    prefetch: threading.Thread | None  # the weight prefetch (daemon), None when prefetch=False

    @property
    def url(self) -> str:
        return self.snapshot.url


def _load_engine_state(store: SnapshotStore, snap: ResolvedSnapshot) -> EngineState:
    """engine/engine_state.json of a resolved snapshot, its paths checked."""
    try:
        raw = fsutil.cat_whole(store.fs, fsutil.join(snap.ref.path, ENGINE_STATE_PATH))
    except FileNotFoundError:
        raise SnapshotMismatch(f"snapshot {snap.url} has no {ENGINE_STATE_PATH}: it was not made by `--engine vllm`") from None
    state = EngineState.model_validate_json(raw)
    # Paths in engine_state.json are read from the store and their files written on this node:
    # the same rule as snapshot.json's (snapshots/paths.py).
    where = f"{snap.url}/{ENGINE_STATE_PATH}"
    for rel in [*state.hf_files, state.compile_cache, state.nccl_topo_file, state.nccl_graph_file]:
        if rel is not None:
            safe_relpath(rel, where=where)
    return state


def read_engine_state(snapshot_url: str, storage_options: dict | None = None):
    """(store, resolved ref, SnapshotMeta, EngineState) of a committed engine snapshot."""
    store, ref = SnapshotStore.for_snapshot(snapshot_url, storage_options)
    snap = store.load(ref)
    return store, snap.ref, snap.meta, _load_engine_state(store, snap)


def materialise_engine_dir(snapshot_url: str) -> Path:
    """Fetch a snapshot's engine files (hf/, compile cache, NCCL files) into this node's engine
    dir ahead of any engine start (the node-join prewarm does this); returns the dir."""
    store, ref = SnapshotStore.for_snapshot(snapshot_url)
    snap = store.load(ref)
    state = _load_engine_state(store, snap)
    edir = engine_dir(snap.ref.model, snap.ref.snapshot_id)
    _materialise(store, snap.ref, state, edir)
    return edir


def _materialise(store: SnapshotStore, resolved: SnapshotRef, state: EngineState, edir: Path) -> None:
    """Fetch engine/hf, the compile cache and NCCL files into edir (once per node and snapshot).

    Under a per-dir file lock: a prewarm prefetch and a replica's start may materialise the same
    dir at once, and a file rewritten while vLLM reads it would be seen half-written."""
    import fcntl

    edir.mkdir(parents=True, exist_ok=True)
    with open(edir / ".materialise.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _materialise_locked(store, resolved, state, edir)


def _materialise_locked(store: SnapshotStore, resolved: SnapshotRef, state: EngineState, edir: Path) -> None:
    done = edir / ".materialised"
    if done.is_file() and done.read_text() == resolved.url:
        return
    nccl = [rel for rel in (state.nccl_topo_file, state.nccl_graph_file) if rel]
    # the small files all at once (on an object store each is a round trip of its own); the
    # compile cache, which can be large, as one read of its own (s3fs splits a large one in ranges)
    got = fsutil.read_whole(store.fs, [fsutil.join(resolved.path, rel) for rel in [*state.hf_files, *nccl]])

    def data(rel: str) -> bytes:
        return fsutil.bytes_or_raise(got[fsutil.join(resolved.path, rel)])

    (edir / "hf").mkdir(parents=True, exist_ok=True)
    for rel in state.hf_files:
        (edir / "hf" / rel.rsplit("/", 1)[-1]).write_bytes(data(rel))
    if state.compile_cache:
        target = edir / "vllm_cache" / "torch_compile_cache"
        target.mkdir(parents=True, exist_ok=True)
        tarball = store.fs.cat_file(fsutil.join(resolved.path, state.compile_cache))
        with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
            tar.extractall(target, filter="data")
    for rel in nccl:
        (edir / "nccl").mkdir(parents=True, exist_ok=True)
        (edir / "nccl" / rel.rsplit("/", 1)[-1]).write_bytes(data(rel))
    done.write_text(resolved.url)


def _prefetch(store: SnapshotStore, snap: ResolvedSnapshot) -> threading.Thread:
    """Start pulling every rank's bytes toward this node while vLLM spawns its workers.

    Remote store: fill the node-local cache (the workers' restore() then finds the files there, or
    waits on the cache's per-rank lock for the transfer already in flight). Local store: ask the
    kernel to read the part files ahead into the page cache (pagecache.read_ahead: chunked
    POSIX_FADV_WILLNEED, asynchronous).
    Either way the weight stream overlaps vLLM's process spawning and communicator setup.
    The snapshot is the one resolved at the start: its snapshot.json is not read again.
    """

    def run() -> None:
        try:
            if store.is_local:
                for info in snap.meta.ranks:
                    for part in info.parts:
                        read_ahead(fsutil.join(snap.ref.path, part.path))
            else:
                SnapshotCache().fetch_resolved(store, snap)
        except Exception as exc:  # noqa: BLE001 - prefetch is an optimisation; restore reports real errors
            log.warning("thawline: prefetch of %s failed (%s); ranks will read it themselves", snap.url, exc)

    thread = threading.Thread(target=run, name="thawline-prefetch", daemon=True)
    thread.start()
    return thread


def prepare_engine_start(snapshot_url: str, *, storage_options: dict | None = None, verify: bool = True,
                         allow_version_mismatch: bool = False, prefetch: bool = True,
                         rank_urls: dict[int, str] | None = None, accelerator: dict | None = None,
                         **overrides) -> PreparedStart:
    """Prepare this node and process to start vLLM from the snapshot; returns the engine args.

    Not a getter: it fetches the engine files into the engine dir, sets VLLM_CACHE_ROOT/NCCL_*
    in os.environ and starts the weight prefetch thread. `overrides` are vLLM engine args (they
    win over the snapshot's); verify / allow_version_mismatch / rank_urls go to the loader.
    Raises SnapshotMismatch (TP size, vLLM version) before any vLLM process is spawned.
    `accelerator` (an AcceleratorInfo dict; probed here when None): when the snapshot recorded
    another accelerator, its KV block count and NCCL topology/graph are not replayed (vLLM
    profiles and detects them again); the weights are restored either way.
    """
    store, ref = SnapshotStore.for_snapshot(snapshot_url, storage_options)
    snap = store.load(ref)  # the one read of snapshot.json in this process
    meta, state = snap.meta, _load_engine_state(store, snap)
    # Fail here, in the caller's process, before any vLLM process is spawned (the TP check even
    # before vLLM is imported).
    check_tp_size(meta.tp_size, int(overrides.get("tensor_parallel_size", meta.tp_size)), where=snap.url)
    import vllm

    check_engine_version(meta.engine.version, vllm.__version__, allow_mismatch=allow_version_mismatch, where=snap.url)
    if storage_options and not store.is_local:
        raise ValueError("storage_options for remote snapshots must come from the environment (the TP workers read it)")

    running = (AcceleratorInfo.model_validate(accelerator) if accelerator is not None
               else probe_accelerator(meta.tp_size, gpu=state.device_type == "cuda"))
    replay = replay_machine_state(state, running)
    if not replay:
        log.warning("thawline: %s was made on %s but this is %s: restoring its weights, profiling the KV "
                    "cache and NCCL topology again", snap.url, state.accelerator.label(), running.label())

    edir = engine_dir(snap.ref.model, snap.ref.snapshot_id)
    if state.compile_cache and str(edir / "hf") != state.model_path:
        # vLLM's compile-cache key hashes the engine's `model` path: the captured cache is only
        # found when this node's engine dir is where the creating node's was.
        log.warning("thawline: engine dir %s differs from the one the snapshot was made in (%s); "
                    "vLLM will not find the captured compile cache and compiles again. Set "
                    "THAWLINE_ENGINE_DIR the same on both nodes to reuse it.", edir, Path(state.model_path).parent)
    _materialise(store, snap.ref, state, edir)
    thread = _prefetch(store, snap) if prefetch else None

    env = _engine_env(state, edir, replay)
    os.environ.update(env)

    kwargs = _engine_kwargs(state, meta.tp_size, edir, replay)
    kwargs["model_loader_extra_config"] = LoaderOptions(
        snapshot_url=snap.url, verify=verify, allow_version_mismatch=allow_version_mismatch,
        rank_urls=rank_urls or {},
    ).model_dump()
    kwargs.update(overrides)
    return PreparedStart(snapshot=snap, state=state, engine_dir=edir, kwargs=kwargs, env=env, prefetch=thread)


def _engine_env(state: EngineState, edir: Path, replay: bool) -> dict[str, str]:
    """The env vLLM and NCCL read at start: always the snapshot's vLLM cache root (its compile
    cache), and the captured NCCL topology/graph when this machine matches the snapshot's."""
    env = {"VLLM_CACHE_ROOT": str(edir / "vllm_cache")}
    for var, rel in (("NCCL_TOPO_FILE", state.nccl_topo_file), ("NCCL_GRAPH_FILE", state.nccl_graph_file)):
        if rel and replay:
            # Read by NCCL when vLLM creates the TP communicators: skips topology detection and
            # the ring/tree search, reusing what was found when the snapshot was made.
            env[var] = str(edir / "nccl" / rel.rsplit("/", 1)[-1])
    return env


def _engine_kwargs(state: EngineState, tp_size: int, edir: Path, replay: bool) -> dict:
    """vLLM engine args from the captured ones, pointed at this node's engine dir and the
    thawline loader (the caller adds the loader's options and its overrides)."""
    kwargs = dict(state.engine_args)
    kwargs["tensor_parallel_size"] = tp_size
    if state.kv_cache.num_gpu_blocks > 0 and replay:
        # The block count found when the snapshot was made: vLLM sizes the KV cache from it
        # instead of profiling memory again.
        kwargs["num_gpu_blocks_override"] = state.kv_cache.num_gpu_blocks
    if state.kv_cache.kv_cache_memory_bytes and replay:
        kwargs["kv_cache_memory_bytes"] = state.kv_cache.kv_cache_memory_bytes
    kwargs.update(model=str(edir / "hf"), load_format=LOAD_FORMAT)
    return kwargs


def start_engine(snapshot_url: str, *, async_engine: bool = False, **overrides):
    """A vLLM LLM (or AsyncLLM) serving the snapshot. Overrides go to vLLM's engine args, except
    verify / allow_version_mismatch / prefetch / storage_options / rank_urls (per-rank snapshot
    URL overrides, for tests and debugging), which go to prepare_engine_start and the loader.
    A worker's load failure raises EngineStartError naming the snapshot and the reason."""
    prepared = prepare_engine_start(snapshot_url, **overrides)
    t0 = time.perf_counter()
    with engine_start_errors(snapshot_url):
        if async_engine:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**prepared.kwargs))
        else:
            from vllm import LLM

            engine = LLM(**prepared.kwargs)
    log.info("thawline: engine from %s started in %.1f s", snapshot_url, time.perf_counter() - t0)
    return engine
