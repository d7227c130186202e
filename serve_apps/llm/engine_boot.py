"""The steps of EngineHost.start (engine_host.py), in the order it drives them: the boot's engine args
(snapshot restore or first-boot capture), the replica's env and GPUs, the AsyncLLM itself, the
first boot's commit, and the engine facts the replica reports.
"""
from __future__ import annotations

import asyncio
import logging
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from serve_apps.llm.node_cache import restore_tag
from serve_apps.llm.spec import CaptureSpec, EngineSpec
from snapshots.errors import SnapshotExists
from snapshots.vllm_engine.load_errors import engine_start_errors

log = logging.getLogger("thawline.serve")

@dataclass
class _Boot:
    """What the engine boots from: its engine args, and either the first-boot capture or the
    snapshot start's load-error handling (load_errors.engine_start_errors)."""

    kwargs: dict
    errors: AbstractContextManager = field(default_factory=nullcontext)
    capture: Any = None  # snapshots.vllm_engine.capture.EngineCapture while this boot writes the snapshot
    first_boot: str | None = None  # "wrote_snapshot" | "served_from_source"
    fetch_tag: str | None = None  # snapshot start: the tag of its node-cache downloads (node_cache.py)
    prefetch: Any = None  # snapshot start: its weight prefetch thread


def use_env(runtime_env) -> None:
    """The replica's runtime_env env_vars in this process before any engine process starts: a
    pooled host runs under the env of whichever app created the pool, and the EngineCore (a
    forkserver child, forkserver.py) and its rank workers take os.environ as it is when they start."""
    env_vars = (runtime_env or {}).get("env_vars") or {}
    os.environ.update({str(k): str(v) for k, v in env_vars.items()})


def use_gpus(gpu_ids) -> None:
    """Only the replica's bundle GPUs are visible to this process and its EngineCore (gpus.py).
    vLLM caches the device capability it read at import, when every GPU of the node was visible."""
    if gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        from vllm.platforms import current_platform

        cached = getattr(current_platform.get_device_capability, "cache_clear", None)
        if cached is not None:
            cached()


async def prepare_boot(spec: EngineSpec) -> _Boot:
    overrides = dict(spec.overrides)
    accelerator = spec.accelerator
    if spec.capture is not None:
        return await prepare_first_boot(spec.capture, overrides, accelerator)
    if spec.snapshot_url:
        from snapshots.vllm_engine.start import prepare_engine_start

        # The same steps as snapshots.vllm_engine.start.start_engine: resolves the snapshot once,
        # materialises engine/hf + compile cache from the node cache, starts the weight prefetch,
        # sets VLLM_CACHE_ROOT/NCCL_*; the recorded KV size (num_gpu_blocks_override /
        # kv_cache_memory_bytes) makes vLLM skip memory profiling.
        url = spec.snapshot_url
        tag = restore_tag()
        prepared = prepare_engine_start(url, verify=spec.verify, accelerator=accelerator,
                                        **overrides)
        return _Boot(prepared.kwargs, errors=engine_start_errors(url), fetch_tag=tag, prefetch=prepared.prefetch)
    raise ValueError("engine spec needs snapshot_url or capture")


async def prepare_first_boot(c: CaptureSpec, overrides: dict, accelerator: dict | None = None) -> _Boot:
    """Snapshot on first boot, one engine boot: this engine's workers write their ranks while
    loading from the source, the snapshot is committed once the engine is up, and the same engine
    then serves. Of two replicas racing for the id, the loser serves from the source."""
    from snapshots.vllm_engine.capture import begin_capture

    try:
        capture = await asyncio.to_thread(
            begin_capture, c.source_dir, tp=c.tp, store_url=c.store_url, name=c.name,
            snapshot_id=c.snapshot_id, accelerator=accelerator, **overrides)
        return _Boot(capture.engine_kwargs(), capture=capture, first_boot="wrote_snapshot")
    except SnapshotExists:
        # Another replica claimed the id and writes it; this one serves from the source.
        log.info("thawline: %s/%s is being written by another replica; serving from %s",
                 c.name, c.snapshot_id, c.source_dir)
        return _Boot({"model": c.source_dir, "tensor_parallel_size": c.tp, **overrides},
                     first_boot="served_from_source")


def build_engine(boot: _Boot, vllm_config, placement_group, runtime_env=None):
    """AsyncLLM (EngineCore, workers, weights, KV cache). A snapshot start's load failure raises
    EngineStartError naming the snapshot and the worker's reason; a failed first boot gives its
    claimed id back."""
    from vllm.v1.engine.async_llm import AsyncLLM

    if placement_group is not None:
        use_replica_group(vllm_config.parallel_config, placement_group, runtime_env)
    try:
        with boot.errors:
            return AsyncLLM.from_vllm_config(vllm_config, **engine_stats_kwargs())
    except Exception:
        if boot.capture is not None:
            boot.capture.abort()
        raise


def use_replica_group(parallel_config, placement_group, runtime_env) -> None:
    """vLLM's Ray executor (GPU) puts one rank worker in each of the replica's bundles and starts
    them under the replica's runtime env; without these a pooled host's engine would take the
    host's (the pool's) runtime env. The executor runs in the EngineCore, which is no Ray worker
    and calls ray.init(address=None): RAY_ADDRESS makes that join this cluster, not whichever
    cluster /tmp/ray last recorded (or a new one)."""
    import ray

    parallel_config.placement_group = placement_group
    if runtime_env is not None:
        parallel_config.ray_runtime_env = runtime_env
    if ray.is_initialized():
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def engine_stats_kwargs() -> dict:
    """vLLM's engine metrics (KV-cache usage, running/waiting requests, TTFT, tokens...) on, and
    exported through Ray's metrics as Ray Serve LLM does (vLLM's RayPrometheusStatLogger): every
    replica's engine reaches the node's metrics agent, and one scrape of the nodes sees them all
    (names `ray_vllm_*`, charted in cluster/grafana/thawline.json). Outside Ray (scripts, tests
    without a cluster) the stats stay off, as before."""
    import ray

    if not ray.is_initialized():
        return {"disable_log_stats": True}
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    return {"disable_log_stats": False, "stat_loggers": [RayPrometheusStatLogger]}


def engine_facts(boot: _Boot, vllm_config, snapshot_url: str | None, *, config_s: float, engine_s: float,
                  serving_state_s: float) -> dict:
    cache = vllm_config.cache_config
    info = {"num_gpu_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
            "model": str(boot.kwargs["model"]), "load_format": str(boot.kwargs.get("load_format", "auto")),
            # engine_start_with_weights split: vLLM config, AsyncLLM (EngineCore + workers +
            # weight load + KV cache), OpenAI serving state
            "engine_start_detail_s": {"config": round(config_s, 3), "engine": round(engine_s, 3),
                                      "serving_state": round(serving_state_s, 3)}}
    if boot.first_boot:
        info["first_boot"] = boot.first_boot
    if snapshot_url:
        info["snapshot_url"] = snapshot_url
    return info


async def commit_capture(boot: _Boot, engine, vllm_config) -> str | None:
    """First boot: record the running engine's state and commit the snapshot; its URL."""
    if boot.capture is None:
        return None
    try:
        infos = await engine.collective_rpc("thawline_engine_info")
        return await asyncio.to_thread(boot.capture.commit, infos, vllm_config.model_config)
    except BaseException:
        boot.capture.abort(keep_engine_dir=True)
        engine.shutdown()
        raise
