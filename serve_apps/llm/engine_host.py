"""EngineHost: one vLLM AsyncLLM behind vLLM's own OpenAI serving classes.

A plain class, so it runs either inside an LLM replica or inside a pre-imported warm-pool actor
(serve_apps/llm/warm_pool.py) that a new replica claims. Construction does the imports (and
starts the preloaded forkserver, see forkserver.py): that is the part a warm pool pays
before any request arrives. `start(spec)` then restores the snapshot and starts the engine.

Requests are handle requests (gateway/llm_protocol.HandleRequest) carrying OpenAI bodies; vLLM's
OpenAIServingChat / OpenAIServingCompletion do the work (chat templates, sampling params,
streaming chunks, usage). Errors come back as error bodies (llm_protocol.error_body: OpenAI's
shape, `code` = HTTP status), never as exceptions, so both the HTTP route and the gateway's
handle call can pass them on.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from gateway import cold_start_phases as cs
from gateway.llm_protocol import CHAT, HandleRequest, LLMAppError, error_body
from serve_apps.llm.node_cache import pin_node_id, restore_downloads, restore_tag
from serve_apps.llm.spec import CaptureSpec, EngineSpec
from serve_apps.llm.vllm_frontend import frontend_defaults
from serve_apps.llm.zygote import forked_from_zygote
from snapshots.errors import SnapshotExists
from snapshots.vllm_engine.load_errors import engine_start_errors

log = logging.getLogger("thawline.serve")

def _vllm_error(e: Exception) -> dict:
    """An exception from vLLM's serving classes as the error body vLLM's own HTTP server would
    answer with. Those classes raise for bad input (a prompt longer than the context is a
    ValueError) and rely on the server's exception handlers for the status; called directly,
    the mapping is ours to apply: 4xx for the client's mistakes, 5xx for the engine's."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    log.info("thawline: request failed in the engine: %s: %s", type(e).__name__, str(e)[:300])
    return create_error_response(e).model_dump()


def _parse_sse(frame: str) -> dict | None:
    """vLLM's serving classes yield SSE frames ('data: {...}\\n\\n'); None for '[DONE]'."""
    data = frame.strip()
    if data.startswith("data:"):
        data = data[5:].strip()
    if not data or data == "[DONE]":
        return None
    return json.loads(data)


class EngineHost:
    def __init__(self, *, forkserver: bool = True) -> None:
        t0 = time.time()
        pin_node_id()  # before any cache use or engine process: THAWLINE_CACHE_DIR may say {node_id}
        from serve_apps.llm import forkserver as llm_forkserver

        # A host forked from the node zygote (serve_apps/llm/zygote.py) has every import below
        # done before its node joined Ray, and forks its EngineCore from the same zygote.
        self.zygote = forked_from_zygote() if forkserver else None
        launch = None
        if self.zygote is not None:
            # This host's forkserver comes from the zygote too (imports Ray and the engine core only).
            launch = llm_forkserver.ZygoteLaunch(self.zygote["socket"])
        elif forkserver:
            # Its server imports torch + vLLM while this process does the same below.
            launch = llm_forkserver.Launch()
        # Imports are the cold start's biggest fixed cost: done here, ahead of any request when
        # the host is pooled. Each of these pulls in torch and most of vLLM.
        import vllm  # noqa: F401
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state  # noqa: F401
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest  # noqa: F401
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest  # noqa: F401
        from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401

        import snapshots.vllm_engine.capture  # noqa: F401
        import snapshots.vllm_engine.capture_loader  # noqa: F401
        import snapshots.vllm_engine.loader  # noqa: F401
        import snapshots.vllm_engine.start  # noqa: F401

        self._frontend_defaults = frontend_defaults()
        self.import_s = time.time() - t0
        # seconds from the forkserver's launch (at the start of this constructor) to ready
        self.forkserver_s = launch.wait() if launch is not None else 0.0
        self.created_at = t0
        self._engine = None
        self._chat = None
        self._completion = None
        self.info: dict[str, Any] = {}

    def describe(self) -> dict:
        return {"pid": os.getpid(), "import_s": round(self.import_s, 3),
                "forkserver_s": round(self.forkserver_s, 3), "started": self._engine is not None,
                # the node zygote this host was forked from (its pid, when its imports finished)
                "zygote": self.zygote}

    # -- start ---------------------------------------------------------------------------------

    async def start(self, spec: EngineSpec) -> dict:
        """Start the engine as `spec` says (serve_apps/llm/spec.py: snapshot_url or capture,
        overrides, verify, gpu_ids, placement_group, runtime_env).
        Returns the marks engine_prepared / engine_ready (time.time(), gateway/cold_start_phases.py)
        and engine facts."""
        if not isinstance(spec, EngineSpec):
            raise TypeError(f"EngineHost.start takes an EngineSpec, got {type(spec).__name__}")
        if self._engine is not None:
            raise RuntimeError("engine already started in this host")
        _use_env(spec.runtime_env)
        _use_gpus(spec.gpu_ids)
        boot = await _prepare_boot(spec)
        prepared = time.time()  # no weight loaded yet: they load inside the engine's start below
        try:
            args, vllm_config = self._engine_config(spec.served_model_id, boot.kwargs)
        except Exception:
            if boot.capture is not None:
                boot.capture.abort()  # a first boot whose config fails gives its claimed id back
            raise
        config_done = time.time()
        engine = _build_engine(boot, vllm_config, spec.placement_group, spec.runtime_env)
        snapshot_url = await _commit_capture(boot, engine, vllm_config)
        engine_done = time.time()
        await self._serve(engine, args)
        serving_done = time.time()
        self.info = _engine_facts(boot, vllm_config, snapshot_url,
                                  config_s=config_done - prepared, engine_s=engine_done - config_done,
                                  serving_state_s=serving_done - engine_done)
        # the node zygote this host was forked from: its imports were done before the node joined
        self.info["zygote"] = self.zygote
        if boot.fetch_tag is not None:
            # what this start downloaded into the node cache itself (0: a node prefetch had it)
            self.info["node_cache"] = await asyncio.to_thread(restore_downloads, boot.fetch_tag, boot.prefetch)
        return {cs.ENGINE_PREPARED: prepared, cs.ENGINE_READY: serving_done, **self.info}

    def _engine_config(self, served: str, kwargs: dict):
        """(frontend args, VllmConfig) for the engine args; names the served model in both."""
        from argparse import Namespace

        from vllm.engine.arg_utils import AsyncEngineArgs

        args = Namespace(**copy.deepcopy(self._frontend_defaults))
        args.model = str(kwargs["model"])
        args.served_model_name = [served]
        kwargs["served_model_name"] = [served]
        return args, AsyncEngineArgs(**kwargs).create_engine_config()

    async def _serve(self, engine, args) -> None:
        """vLLM's OpenAI serving state on the running engine; the host serves from here on."""
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state

        state = State()
        await init_app_state(engine, state, args, supported_tasks=await engine.get_supported_tasks())
        self._engine = engine
        self._chat = getattr(state, "openai_serving_chat", None)
        self._completion = getattr(state, "openai_serving_completion", None)

    # -- requests ------------------------------------------------------------------------------

    def _request(self, request: dict, *, stream: bool):
        try:
            req = HandleRequest.from_wire(request)
        except LLMAppError as e:
            return None, e.body
        endpoint, body = req.endpoint, dict(req.body)
        if self._engine is None:
            return None, error_body("engine not started", 503, "service_unavailable")
        body["stream"] = stream
        if stream:
            # The handle protocol: the last chunk always carries usage (callers strip it).
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            if endpoint == CHAT:
                from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

                return (self._chat.create_chat_completion, ChatCompletionRequest(**body)), None
            from vllm.entrypoints.openai.completion.protocol import CompletionRequest

            return (self._completion.create_completion, CompletionRequest(**body)), None
        except Exception as e:  # pydantic validation of the body: the client's mistake
            return None, error_body(f"invalid {endpoint} request: {e}".replace("\n", " ")[:2000])

    async def generate(self, request: dict) -> dict:
        call, err = self._request(request, stream=False)
        if err:
            return err
        fn, req = call
        try:
            out = await fn(req, None)
        except Exception as e:  # noqa: BLE001 - mapped to a status exactly as vLLM's server maps it
            return _vllm_error(e)
        if hasattr(out, "error") and not hasattr(out, "choices"):  # vLLM ErrorResponse
            return out.model_dump()
        return out.model_dump(exclude_none=True)

    async def generate_stream(self, request: dict) -> AsyncIterator[dict]:
        call, err = self._request(request, stream=True)
        if err:
            yield err
            return
        fn, req = call
        try:
            out = await fn(req, None)
        except Exception as e:  # noqa: BLE001 - e.g. the prompt exceeds the context: a 400
            yield _vllm_error(e)
            return
        if not hasattr(out, "__aiter__"):  # an ErrorResponse before the stream started
            yield out.model_dump()
            return
        try:
            async for frame in out:
                chunk = _parse_sse(frame)
                if chunk is not None:
                    yield chunk
        except Exception as e:  # noqa: BLE001 - mid-stream: the router turns it into a broken stream
            yield _vllm_error(e)

    # -- parking ---------------------------------------------------------------------------------

    def park(self) -> int:
        """The engine stays started while its replica is gone (warm_pool.WarmPool.park); returns the
        host memory its processes hold (this one and its EngineCore / rank workers), the figure
        the pool's budget counts (proportional set sizes, serve_apps/llm/host_memory.py). On CPU
        there is nothing to release: vLLM has no sleep mode there, so weights and KV cache stay."""
        if self._engine is None:
            raise RuntimeError("no started engine to park")
        from serve_apps.llm.host_memory import tree_memory_bytes

        return tree_memory_bytes(os.getpid())

    def adopt(self) -> dict:
        """A new replica takes this started engine over: the start's facts, and its two marks set
        to now (no engine starts)."""
        if self._engine is None:
            raise RuntimeError("no started engine to adopt")
        now = time.time()
        return {cs.ENGINE_PREPARED: now, cs.ENGINE_READY: now, **self.info}

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


# -- start steps (EngineHost.start drives them in this order) ----------------------------------


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


def _use_env(runtime_env) -> None:
    """The replica's runtime_env env_vars in this process before any engine process starts: a
    pooled host runs under the env of whichever app created the pool, and the EngineCore (a
    forkserver child, forkserver.py) and its rank workers take os.environ as it is when they start."""
    env_vars = (runtime_env or {}).get("env_vars") or {}
    os.environ.update({str(k): str(v) for k, v in env_vars.items()})


def _use_gpus(gpu_ids) -> None:
    """Only the replica's bundle GPUs are visible to this process and its EngineCore (gpus.py).
    vLLM caches the device capability it read at import, when every GPU of the node was visible."""
    if gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        from vllm.platforms import current_platform

        cached = getattr(current_platform.get_device_capability, "cache_clear", None)
        if cached is not None:
            cached()


async def _prepare_boot(spec: EngineSpec) -> _Boot:
    overrides = dict(spec.overrides)
    accelerator = spec.accelerator
    if spec.capture is not None:
        return await _prepare_first_boot(spec.capture, overrides, accelerator)
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


async def _prepare_first_boot(c: CaptureSpec, overrides: dict, accelerator: dict | None = None) -> _Boot:
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


def _build_engine(boot: _Boot, vllm_config, placement_group, runtime_env=None):
    """AsyncLLM (EngineCore, workers, weights, KV cache). A snapshot start's load failure raises
    EngineStartError naming the snapshot and the worker's reason; a failed first boot gives its
    claimed id back."""
    from vllm.v1.engine.async_llm import AsyncLLM

    if placement_group is not None:
        _use_replica_group(vllm_config.parallel_config, placement_group, runtime_env)
    try:
        with boot.errors:
            return AsyncLLM.from_vllm_config(vllm_config, **engine_stats_kwargs())
    except Exception:
        if boot.capture is not None:
            boot.capture.abort()
        raise


def _use_replica_group(parallel_config, placement_group, runtime_env) -> None:
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


def _engine_facts(boot: _Boot, vllm_config, snapshot_url: str | None, *, config_s: float, engine_s: float,
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


async def _commit_capture(boot: _Boot, engine, vllm_config) -> str | None:
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
