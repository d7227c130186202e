"""Make a snapshot by booting vLLM once, and start vLLM from a snapshot.

    create_engine_snapshot(hf_dir, tp=, store_url=, name=) -> snapshot URL
    start_engine(snapshot_url, async_engine=False, **overrides) -> vllm.LLM | AsyncLLM

A snapshot is self-contained: weights per rank (written by each TP worker, see vllm_loader.py),
engine/hf/ (config, tokenizer, generation files), engine/engine_state.json (engine args, KV-cache
size, parallel layout), the torch.compile cache and, on CUDA, the NCCL topology/graph dumps.

Both functions set process environment variables that vLLM and NCCL read when the engine's
processes start (VLLM_CACHE_ROOT, NCCL_*): that is the only interface those libraries offer.
Scripts calling them need the `if __name__ == "__main__":` guard (vLLM spawns processes).
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from snapshots.engine_state import (
    COMPILE_CACHE_PATH,
    ENGINE_STATE_PATH,
    HF_DIR,
    HF_SIDE_FILES,
    NCCL_GRAPH_PATH,
    NCCL_TOPO_PATH,
    EngineState,
    KVCacheProfile,
    ParallelLayout,
    RankPlacement,
    SnapshotMismatch,
    check_engine_version,
    check_tp_size,
)

log = logging.getLogger("thawline.engine")


class EngineStartError(RuntimeError):
    """The engine did not start from the snapshot; the message is the first failing rank's reason."""


def engine_root() -> Path:
    """Where snapshot engine dirs are materialised: $THAWLINE_ENGINE_DIR, else <cache dir>/engines."""
    env = os.environ.get("THAWLINE_ENGINE_DIR")
    if env:
        return Path(env)
    from snapshots.cache import default_cache_dir

    return default_cache_dir() / "engines"


def engine_dir(model: str, snapshot_id: str) -> Path:
    """Per-snapshot local dir: hf/ (the engine's `model`), vllm_cache/ (VLLM_CACHE_ROOT), nccl/.

    Creation and every restore on a node use the same path, so vLLM's compile-cache key (which
    hashes the model path) matches and the captured torch.compile artifacts are reused.
    """
    return engine_root() / model / snapshot_id


def _device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _shutdown(llm) -> None:
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def _tar_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(path.rglob("*")):
            if f.is_file() and not f.name.endswith(".lock"):
                tar.add(f, arcname=str(f.relative_to(path)), recursive=False)
    return buf.getvalue()


class EngineCapture:
    """One engine-made snapshot in progress: the claimed id, the engine dir, the engine args.

        capture = begin_capture(hf_dir, tp=, store_url=, name=)   # claims the id (SnapshotExists)
        engine = LLM(**capture.engine_kwargs())                    # or AsyncLLM: each TP worker
                                                                   # writes its rank while loading
        capture.commit(engine_infos, model_config) -> snapshot URL  # engine state, then commit

    The engine that made the snapshot is a normal engine afterwards: create_engine_snapshot shuts
    it down, a first-boot replica keeps serving from it (serve_apps/llm/engine_host.py).
    """

    def __init__(self, *, store, writer, hf: Path, edir: Path, side_files: list[str], args: dict,
                 storage_options: dict | None) -> None:
        self.store, self.writer, self.hf, self.edir = store, writer, hf, edir
        self.side_files, self.args, self.storage_options = side_files, args, storage_options

    @property
    def hf_local(self) -> Path:
        return self.edir / "hf"

    def engine_kwargs(self) -> dict:
        from snapshots.vllm_loader import CaptureOptions
        from snapshots.vllm_plugin import CAPTURE_FORMAT
        from snapshots.vllm_worker_ext import WORKER_EXTENSION

        capture = CaptureOptions(
            store_url=self.store.url, model=self.writer.model, snapshot_id=self.writer.snapshot_id,
            hf_dir=str(self.hf), storage_options=self.storage_options or {},
        )
        return {"model": str(self.hf_local), "load_format": CAPTURE_FORMAT,
                "model_loader_extra_config": capture.model_dump(),
                "worker_extension_cls": WORKER_EXTENSION, **self.args}

    def commit(self, infos: list[dict], model_config) -> str:
        """Write the engine state (infos: every worker's thawline_engine_info) and commit."""
        import vllm

        infos = sorted(infos, key=lambda i: i["rank"])
        effective = {
            **self.args,
            "dtype": str(model_config.dtype).removeprefix("torch."),
            "max_model_len": int(model_config.max_model_len),
        }
        state = EngineState(
            engine_version=vllm.__version__,
            device_type=_device_type(),
            engine_args=effective,
            model_path=str(self.hf_local),
            kv_cache=KVCacheProfile(
                num_gpu_blocks=infos[0]["num_gpu_blocks"],
                block_size=infos[0]["block_size"],
                kv_cache_memory_bytes=infos[0]["kv_cache_memory_bytes"],
            ),
            layout=ParallelLayout(
                world_size=len(infos),
                tp_size=int(self.args["tensor_parallel_size"]),
                backend=infos[0]["backend"],
                executor=infos[0]["executor"],
                placement="single node, one device per rank (Ray: one bundle per rank, STRICT_PACK)",
                ranks=[RankPlacement(rank=i["rank"], local_rank=i["local_rank"], device=i["device"], hostname=i["hostname"]) for i in infos],
            ),
            hf_files=[f"{HF_DIR}/{f}" for f in self.side_files],
        )
        writer, nccl_dir = self.writer, self.edir / "nccl"
        for f in self.side_files:
            writer.put_file(f"{HF_DIR}/{f}", (self.hf_local / f).read_bytes())
        if (nccl_dir / "topo.xml").is_file():
            writer.put_file(NCCL_TOPO_PATH, (nccl_dir / "topo.xml").read_bytes())
            state.nccl_topo_file = NCCL_TOPO_PATH
        if (nccl_dir / "graph.xml").is_file():
            writer.put_file(NCCL_GRAPH_PATH, (nccl_dir / "graph.xml").read_bytes())
            state.nccl_graph_file = NCCL_GRAPH_PATH
        compile_dir = self.edir / "vllm_cache" / "torch_compile_cache"
        if compile_dir.is_dir() and any(p.is_file() for p in compile_dir.rglob("*")):
            writer.put_file(COMPILE_CACHE_PATH, _tar_dir(compile_dir))
            state.compile_cache = COMPILE_CACHE_PATH
        writer.put_file(ENGINE_STATE_PATH, state.model_dump_json(indent=2).encode())
        writer.commit({
            "dtype": effective["dtype"],
            "engine": {"name": "vllm", "version": vllm.__version__},
            "engine_state": ENGINE_STATE_PATH,
            "source": str(self.hf),
        })
        return writer.url

    def abort(self, *, keep_engine_dir: bool = False) -> None:
        """Drop the claimed id and what was written. keep_engine_dir: an engine still running from
        it (first boot whose commit failed) keeps its files."""
        self.writer.abort()
        if not keep_engine_dir:
            shutil.rmtree(self.edir, ignore_errors=True)


def begin_capture(
    hf_dir: str,
    *,
    tp: int,
    store_url: str,
    name: str,
    dtype: str | None = None,
    max_model_len: int | None = None,
    storage_options: dict | None = None,
    snapshot_id: str | None = None,
    **engine_kwargs,
) -> EngineCapture:
    """Claim the snapshot id (SnapshotExists if taken), prepare the engine dir and the env that vLLM
    and NCCL read when the engine's processes start."""
    from snapshots.store import SnapshotStore

    hf = Path(hf_dir).expanduser().resolve()
    if not (hf / "config.json").is_file():
        raise FileNotFoundError(f"{hf} is not a Hugging Face checkpoint (no config.json)")
    store = SnapshotStore(store_url, storage_options)
    writer = store.create_writer(name, snapshot_id, tp_size=tp)
    edir = engine_dir(name, writer.snapshot_id)
    try:
        (edir / "hf").mkdir(parents=True, exist_ok=True)
        side_files = [f for f in HF_SIDE_FILES if (hf / f).is_file()]
        for f in side_files:
            shutil.copyfile(hf / f, edir / "hf" / f)
        env = {"VLLM_CACHE_ROOT": str(edir / "vllm_cache")}
        if _device_type() == "cuda":
            # NCCL writes these when the first communicator is created (rank 0 by default; one
            # node shares one topology). Handed back at restore as NCCL_TOPO_FILE/NCCL_GRAPH_FILE.
            (edir / "nccl").mkdir(parents=True, exist_ok=True)
            env["NCCL_TOPO_DUMP_FILE"] = str(edir / "nccl" / "topo.xml")
            env["NCCL_GRAPH_DUMP_FILE"] = str(edir / "nccl" / "graph.xml")
        os.environ.update(env)
    except BaseException:
        writer.abort()
        shutil.rmtree(edir, ignore_errors=True)
        raise
    args: dict = {"tensor_parallel_size": tp, **engine_kwargs}
    if dtype is not None:
        args["dtype"] = dtype
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
    return EngineCapture(store=store, writer=writer, hf=hf, edir=edir, side_files=side_files, args=args,
                         storage_options=storage_options)


def create_engine_snapshot(hf_dir: str, *, tp: int, store_url: str, name: str, **kwargs) -> str:
    """Boot vLLM at TP=`tp` on `hf_dir`; every worker writes its own rank; returns the snapshot URL.
    kwargs: dtype, max_model_len, storage_options, snapshot_id, and vLLM engine args."""
    from vllm import LLM

    capture = begin_capture(hf_dir, tp=tp, store_url=store_url, name=name, **kwargs)
    try:
        llm = LLM(**capture.engine_kwargs())
        try:
            infos = llm.collective_rpc("thawline_engine_info")
            model_config = llm.llm_engine.model_config
        finally:
            _shutdown(llm)
            del llm
        return capture.commit(infos, model_config)
    except BaseException:
        capture.abort()
        raise


# ---------------------------------------------------------------------------------------------
# start


def read_engine_state(snapshot_url: str, storage_options: dict | None = None):
    """(store, resolved ref, SnapshotMeta, EngineState) of a committed engine snapshot."""
    from snapshots import fsutil
    from snapshots.store import SnapshotStore

    store, ref = SnapshotStore.for_snapshot(snapshot_url, storage_options)
    resolved = store.resolve(ref)
    meta = store.inspect(resolved)
    try:
        raw = store.fs.cat_file(fsutil.join(resolved.path, ENGINE_STATE_PATH))
    except FileNotFoundError:
        raise SnapshotMismatch(f"snapshot {resolved.url} has no {ENGINE_STATE_PATH}: it was not made by `--engine vllm`") from None
    state = EngineState.model_validate_json(raw)
    # Paths in engine_state.json are read from the store and their files written on this node:
    # the same rule as snapshot.json's (snapshots/paths.py).
    from snapshots.paths import safe_relpath

    where = f"{resolved.url}/{ENGINE_STATE_PATH}"
    for rel in [*state.hf_files, state.compile_cache, state.nccl_topo_file, state.nccl_graph_file]:
        if rel is not None:
            safe_relpath(rel, where=where)
    return store, resolved, meta, state


def _materialise(store, resolved, state: EngineState, edir: Path) -> None:
    """Fetch engine/hf, the compile cache and NCCL files into edir (once per node and snapshot)."""
    from snapshots import fsutil

    done = edir / ".materialised"
    if done.is_file() and done.read_text() == resolved.url:
        return
    (edir / "hf").mkdir(parents=True, exist_ok=True)
    for rel in state.hf_files:
        data = store.fs.cat_file(fsutil.join(resolved.path, rel))
        (edir / "hf" / rel.rsplit("/", 1)[-1]).write_bytes(data)
    if state.compile_cache:
        target = edir / "vllm_cache" / "torch_compile_cache"
        target.mkdir(parents=True, exist_ok=True)
        data = store.fs.cat_file(fsutil.join(resolved.path, state.compile_cache))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(target, filter="data")
    for rel in (state.nccl_topo_file, state.nccl_graph_file):
        if rel:
            (edir / "nccl").mkdir(parents=True, exist_ok=True)
            (edir / "nccl" / rel.rsplit("/", 1)[-1]).write_bytes(store.fs.cat_file(fsutil.join(resolved.path, rel)))
    done.write_text(resolved.url)


def _prefetch(store, resolved, meta, storage_options) -> threading.Thread:
    """Start pulling every rank's bytes toward this node while vLLM spawns its workers.

    Remote store: fill the node-local cache (the workers' restore() then finds the files there, or
    waits on the cache's per-rank lock for the transfer already in flight). Local store: ask the
    kernel to read the part files ahead into the page cache (pagecache.read_ahead: chunked
    POSIX_FADV_WILLNEED, asynchronous).
    Either way the weight stream overlaps the ~15 s of process spawning and communicator setup.
    """
    from snapshots import fsutil
    from snapshots.pagecache import read_ahead

    def run() -> None:
        try:
            if store.is_local:
                for info in meta.ranks:
                    for part in info.parts:
                        read_ahead(fsutil.join(resolved.path, part.path))
            else:
                from snapshots.cache import SnapshotCache

                SnapshotCache().fetch(resolved.url, storage_options=storage_options)
        except Exception as exc:  # noqa: BLE001 - prefetch is an optimisation; restore reports real errors
            log.warning("thawline: prefetch of %s failed (%s); ranks will read it themselves", resolved.url, exc)

    thread = threading.Thread(target=run, name="thawline-prefetch", daemon=True)
    thread.start()
    return thread


def engine_kwargs(snapshot_url: str, *, storage_options: dict | None = None, verify: bool = True,
                  allow_version_mismatch: bool = False, prefetch: bool = True,
                  rank_urls: dict[int, str] | None = None, **overrides) -> dict:
    """vLLM engine arguments that start from the snapshot; prepares the node (files, env, prefetch).

    Separate from start_engine so a caller building its own engine (e.g. a Ray Serve app) gets the
    same configuration.
    """
    store, resolved, meta, state = read_engine_state(snapshot_url, storage_options)
    # Fail here, in the caller's process, before any vLLM process is spawned (the TP check even
    # before vLLM is imported).
    check_tp_size(meta.tp_size, int(overrides.get("tensor_parallel_size", meta.tp_size)), where=resolved.url)
    import vllm

    from snapshots.vllm_loader import LoaderOptions
    from snapshots.vllm_plugin import LOAD_FORMAT

    check_engine_version(meta.engine.version, vllm.__version__, allow_mismatch=allow_version_mismatch, where=resolved.url)
    if storage_options and not store.is_local:
        raise ValueError("storage_options for remote snapshots must come from the environment (the TP workers read it)")

    edir = engine_dir(resolved.model, resolved.snapshot_id)
    if state.compile_cache and str(edir / "hf") != state.model_path:
        # vLLM's compile-cache key hashes the engine's `model` path: the captured cache is only
        # found when this node's engine dir is where the creating node's was.
        log.warning("thawline: engine dir %s differs from the one the snapshot was made in (%s); "
                    "vLLM will not find the captured compile cache and compiles again. Set "
                    "THAWLINE_ENGINE_DIR the same on both nodes to reuse it.", edir, Path(state.model_path).parent)
    _materialise(store, resolved, state, edir)
    if prefetch:
        _prefetch(store, resolved, meta, storage_options)

    os.environ["VLLM_CACHE_ROOT"] = str(edir / "vllm_cache")
    for var, rel in (("NCCL_TOPO_FILE", state.nccl_topo_file), ("NCCL_GRAPH_FILE", state.nccl_graph_file)):
        if rel:
            # Read by NCCL when vLLM creates the TP communicators: skips topology detection and
            # the ring/tree search, reusing what was found when the snapshot was made.
            os.environ[var] = str(edir / "nccl" / rel.rsplit("/", 1)[-1])

    kwargs = dict(state.engine_args)
    kwargs["tensor_parallel_size"] = meta.tp_size
    if state.kv_cache.num_gpu_blocks > 0:
        # The block count found when the snapshot was made: vLLM sizes the KV cache from it
        # instead of profiling memory again.
        kwargs["num_gpu_blocks_override"] = state.kv_cache.num_gpu_blocks
    if state.kv_cache.kv_cache_memory_bytes:
        kwargs["kv_cache_memory_bytes"] = state.kv_cache.kv_cache_memory_bytes
    kwargs.update(
        model=str(edir / "hf"),
        load_format=LOAD_FORMAT,
        model_loader_extra_config=LoaderOptions(
            snapshot_url=resolved.url, verify=verify, allow_version_mismatch=allow_version_mismatch,
            rank_urls=rank_urls or {},
        ).model_dump(),
    )
    kwargs.update(overrides)
    return kwargs


def start_engine(snapshot_url: str, *, async_engine: bool = False, **overrides):
    """A vLLM LLM (or AsyncLLM) serving the snapshot. Overrides go to vLLM's engine args, except
    verify / allow_version_mismatch / prefetch / storage_options / rank_urls (per-rank snapshot
    URL overrides, for tests and debugging), which go to the loader."""
    from snapshots.vllm_loader import ERROR_FILE_ENV

    kwargs = engine_kwargs(snapshot_url, **overrides)
    fd, error_file = tempfile.mkstemp(prefix="thawline-load-error-")
    os.close(fd)
    os.unlink(error_file)  # workers create it exclusively on failure
    os.environ[ERROR_FILE_ENV] = error_file
    t0 = time.perf_counter()
    try:
        if async_engine:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        else:
            from vllm import LLM

            engine = LLM(**kwargs)
    except Exception as exc:
        reason = Path(error_file).read_text() if os.path.exists(error_file) else None
        if reason:
            raise EngineStartError(f"engine start from {snapshot_url} failed: {reason}") from exc
        raise
    finally:
        if os.path.exists(error_file):
            os.unlink(error_file)
    log.info("thawline: engine from %s started in %.1f s", snapshot_url, time.perf_counter() - t0)
    return engine


def dump_engine_state(snapshot_url: str) -> str:
    """engine_state.json of a snapshot, pretty-printed (for `thawline snapshot inspect`)."""
    return json.dumps(read_engine_state(snapshot_url)[3].model_dump(), indent=2)
