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
import gc
import json
import logging
import os
import time
from contextlib import nullcontext
from typing import Any, AsyncIterator

from gateway import cold_start_phases as cs
from gateway.llm_protocol import CHAT, HandleRequest, LLMAppError, error_body, model_not_found
from serve_apps.gil import use_serving_switch_interval
from serve_apps.llm import engine_boot as boot_steps
from serve_apps.llm.node_cache import pin_node_id, restore_downloads
from serve_apps.llm.spec import EngineSpec
from serve_apps.llm.vllm_frontend import frontend_defaults
from serve_apps.llm.zygote import forked_from_zygote

log = logging.getLogger("thawline.serve")

def _vllm_error(e: Exception) -> dict:
    """An exception from vLLM's serving classes as the error body vLLM's own HTTP server would
    answer with. Those classes raise for bad input (a prompt longer than the context is a
    ValueError) and rely on the server's exception handlers for the status; called directly,
    the mapping is ours to apply: 4xx for the client's mistakes, 5xx for the engine's."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    log.info("thawline: request failed in the engine: %s: %s", type(e).__name__, str(e)[:300])
    return create_error_response(e).model_dump()


_NO_ADAPTER = nullcontext()  # reusable: an async context manager that does nothing


def _adapter_resolver(spec: EngineSpec, engine):
    """The store resolver for the app's adapters, registered with vLLM before its serving layer is
    built (which lists the registered resolvers once)."""
    from snapshots.vllm_engine.lora_resolver import ServedBase, ThawlineAdapterResolver, register_resolver

    a = spec.adapters
    base = ServedBase.from_hf_config(a.model, engine.model_config.hf_config)
    return register_resolver(ThawlineAdapterResolver(a.store_url, a.model, base=base, max_lora_rank=a.max_lora_rank))


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
        use_serving_switch_interval()  # serve_apps/gil.py: adapter fetches beside a busy request loop
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
        self._adapters = None  # adapter_host.HostAdapters when the engine serves LoRA adapters
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
        boot_steps.use_env(spec.runtime_env)
        boot_steps.use_gpus(spec.gpu_ids)
        boot = await boot_steps.prepare_boot(spec)
        prepared = time.time()  # no weight loaded yet: they load inside the engine's start below
        try:
            args, vllm_config = self._engine_config(spec.served_model_id, boot.kwargs)
        except Exception:
            if boot.capture is not None:
                boot.capture.abort()  # a first boot whose config fails gives its claimed id back
            raise
        config_done = time.time()
        engine = boot_steps.build_engine(boot, vllm_config, spec.placement_group, spec.runtime_env)
        snapshot_url = await boot_steps.commit_capture(boot, engine, vllm_config)
        engine_done = time.time()
        await self._serve(engine, args, spec)
        # What vLLM's own API server does once up (vllm.utils.gc_utils.freeze_gc_heap), less its
        # full collection (~0.4 s here, on the cold path): the ~0.7 M objects of torch, vLLM and the
        # engine leave the collector's view, or each full collection while serving stalls every
        # request on this loop for as long. Undone at shutdown, so a stopped engine is collectable.
        gc.freeze()
        serving_done = time.time()
        self.info = boot_steps.engine_facts(boot, vllm_config, snapshot_url,
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

    async def _serve(self, engine, args, spec: EngineSpec) -> None:
        """vLLM's OpenAI serving state on the running engine; the host serves from here on."""
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state

        resolver = _adapter_resolver(spec, engine) if spec.adapters is not None else None
        state = State()
        await init_app_state(engine, state, args, supported_tasks=await engine.get_supported_tasks())
        self._engine = engine
        self._chat = getattr(state, "openai_serving_chat", None)
        self._completion = getattr(state, "openai_serving_completion", None)
        if resolver is not None:
            from serve_apps.llm.adapter_host import HostAdapters

            self._adapters = HostAdapters(spec.adapters, engine, state.openai_serving_models, resolver).start()

    # -- requests ------------------------------------------------------------------------------

    async def _request(self, request: dict, *, stream: bool):
        """((serving call, vLLM request), adapter name or None), or (None, error body)."""
        try:
            req = HandleRequest.from_wire(request)
        except LLMAppError as e:
            return None, e.body
        endpoint, body = req.endpoint, dict(req.body)
        if self._engine is None:
            return None, error_body("engine not started", 503, "service_unavailable")
        if req.adapter is not None:
            if self._adapters is None:  # this app serves no adapters: like any unknown model
                return None, model_not_found(req.adapter).body
            if (err := await self._adapters.resolve(req.adapter)) is not None:
                return None, err
            body["model"] = req.adapter  # vLLM's serving classes pick the LoRARequest by this name
        body["stream"] = stream
        if stream:
            # The handle protocol: the last chunk always carries usage (callers strip it).
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            if endpoint == CHAT:
                from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

                return (self._chat.create_chat_completion, ChatCompletionRequest(**body), req.adapter), None
            from vllm.entrypoints.openai.completion.protocol import CompletionRequest

            return (self._completion.create_completion, CompletionRequest(**body), req.adapter), None
        except Exception as e:  # pydantic validation of the body: the client's mistake
            return None, error_body(f"invalid {endpoint} request: {e}".replace("\n", " ")[:2000])

    def _in_use(self, adapter: str | None):
        """While a request of `adapter` runs, the idle unloader leaves it loaded."""
        return self._adapters.active(adapter) if adapter is not None else _NO_ADAPTER

    async def generate(self, request: dict) -> dict:
        call, err = await self._request(request, stream=False)
        if err:
            return err
        fn, req, adapter = call
        async with self._in_use(adapter):
            try:
                out = await fn(req, None)
            except Exception as e:  # noqa: BLE001 - mapped to a status exactly as vLLM's server maps it
                return _vllm_error(e)
        if hasattr(out, "error") and not hasattr(out, "choices"):  # vLLM ErrorResponse
            return out.model_dump()
        return out.model_dump(exclude_none=True)

    async def generate_stream(self, request: dict) -> AsyncIterator[dict]:
        call, err = await self._request(request, stream=True)
        if err:
            yield err
            return
        fn, req, adapter = call
        async with self._in_use(adapter):
            async for chunk in self._stream(fn, req):
                yield chunk

    async def adapters(self) -> dict | None:
        """The adapters this host has loaded, their load times and unloads (None: serves none)."""
        return None if self._adapters is None else await self._adapters.describe()

    async def unload_idle_adapters(self) -> list[str]:
        """Run the idle unloader now (tests and operators; it also runs on its own)."""
        return [] if self._adapters is None else await self._adapters.unload_idle()

    @staticmethod
    async def _stream(fn, req) -> AsyncIterator[dict]:
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
        if self._adapters is not None:
            self._adapters.stop()
            self._adapters = None
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
            gc.unfreeze()
