"""Make a snapshot by booting vLLM once: every TP worker writes its own rank while loading.

    create_engine_snapshot(hf_dir, tp=, store_url=, name=) -> snapshot URL
    begin_capture(...) -> EngineCapture   # the same, split, for a caller that keeps the engine

A snapshot is self-contained: weights per rank (written by each TP worker, see
capture_loader.py), engine/hf/ (config, tokenizer, generation files), engine/engine_state.json
(engine args, KV-cache size, parallel layout), the torch.compile cache and, on CUDA, the NCCL
topology/graph dumps.

begin_capture sets process environment variables that vLLM and NCCL read when the engine's
processes start (VLLM_CACHE_ROOT, NCCL_*_DUMP_FILE): that is the only interface those libraries
offer. Scripts calling it need the `if __name__ == "__main__":` guard (vLLM spawns processes).
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path
from typing import Callable

from snapshots.store import SnapshotStore
from snapshots.vllm_engine.engine_dir import engine_dir
from snapshots.vllm_engine.identity import probe_accelerator
from snapshots.vllm_engine.engine_state import (
    COMPILE_CACHE_PATH,
    ENGINE_STATE_PATH,
    HF_DIR,
    HF_SIDE_FILES,
    NCCL_GRAPH_PATH,
    NCCL_TOPO_PATH,
    AcceleratorInfo,
    EngineState,
    KVCacheProfile,
    ParallelLayout,
    RankPlacement,
)
from snapshots.vllm_engine.options import CaptureOptions
from snapshots.vllm_engine.plugin import CAPTURE_FORMAT
from snapshots.vllm_engine.worker_ext import WORKER_EXTENSION


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
                 storage_options: dict | None, accelerator: AcceleratorInfo | None = None) -> None:
        self.store, self.writer, self.hf, self.edir = store, writer, hf, edir
        self.side_files, self.args, self.storage_options = side_files, args, storage_options
        self.accelerator = accelerator

    @property
    def hf_local(self) -> Path:
        return self.edir / "hf"

    def engine_kwargs(self) -> dict:
        """Engine args of the capturing boot (a plain getter: begin_capture prepared everything)."""
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
            # What the KV block count and NCCL files below are valid for (checked at restore).
            accelerator=self.accelerator or probe_accelerator(len(infos), gpu=_device_type() == "cuda"),
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
    accelerator: AcceleratorInfo | dict | None = None,
    **engine_kwargs,
) -> EngineCapture:
    """Claim the snapshot id (SnapshotExists if taken), prepare the engine dir and the env that vLLM
    and NCCL read when the engine's processes start."""
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
    if isinstance(accelerator, dict):
        accelerator = AcceleratorInfo.model_validate(accelerator)
    return EngineCapture(store=store, writer=writer, hf=hf, edir=edir, side_files=side_files, args=args,
                         storage_options=storage_options, accelerator=accelerator)


def create_engine_snapshot(hf_dir: str, *, tp: int, store_url: str, name: str,
                           on_phase: Callable[[str, EngineCapture], None] | None = None, **kwargs) -> str:
    """Boot vLLM at TP=`tp` on `hf_dir`; every worker writes its own rank; returns the snapshot URL.
    kwargs: dtype, max_model_len, storage_options, snapshot_id, and vLLM engine args.
    on_phase("boot" | "commit" | "done", capture): for progress displays (the ranks are written
    by worker processes during "boot", so a caller watches the store to show their bytes)."""
    from vllm import LLM

    phase = on_phase or (lambda _name, _capture: None)
    capture = begin_capture(hf_dir, tp=tp, store_url=store_url, name=name, **kwargs)
    try:
        phase("boot", capture)
        llm = LLM(**capture.engine_kwargs())
        try:
            infos = llm.collective_rpc("thawline_engine_info")
            model_config = llm.llm_engine.model_config
        finally:
            _shutdown(llm)
            del llm
        phase("commit", capture)
        url = capture.commit(infos, model_config)
        phase("done", capture)
        return url
    except BaseException:
        capture.abort()
        raise
