"""EngineHost: one vLLM AsyncLLM behind vLLM's own OpenAI serving classes.

A plain class, so it runs either inside an LLM replica or inside a pre-imported warm-pool actor
(serve_apps/llm/warm_pool.py) that a new replica claims. Construction does the imports (and
starts the preloaded forkserver, see forkserver.py): that is the part a warm pool pays
before any request arrives. `start(spec)` then restores the snapshot and starts the engine.

Requests are OpenAI bodies; vLLM's OpenAIServingChat / OpenAIServingCompletion do the work (chat
templates, sampling params, streaming chunks, usage). Errors come back in OpenAI's error shape
(`{"error": {...}}`, `code` = HTTP status), never as exceptions, so both the HTTP route and the
gateway's handle call can pass them on.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

log = logging.getLogger("thawline.serve")

ENDPOINTS = ("chat", "completions")


def _error(message: str, code: int = 400, type_: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


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
        # Imports are the cold start's biggest fixed cost: done here, ahead of any request when
        # the host is pooled. Each of these pulls in torch and most of vLLM.
        import vllm  # noqa: F401
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state  # noqa: F401
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest  # noqa: F401
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest  # noqa: F401
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401

        import snapshots.engine  # noqa: F401
        import snapshots.vllm_loader  # noqa: F401

        # vLLM's frontend defaults (chat template, tool parsers, logging...). Building this parser
        # walks every config dataclass: seconds on a busy 2-core node, so not on the cold path.
        self._frontend_defaults = vars(make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "unset"]))
        self.import_s = time.time() - t0
        self.forkserver_s = 0.0
        if forkserver:
            from serve_apps.llm import forkserver as llm_forkserver

            self.forkserver_s = llm_forkserver.start()
        self.created_at = t0
        self._engine = None
        self._chat = None
        self._completion = None
        self.info: dict[str, Any] = {}

    def describe(self) -> dict:
        return {"pid": os.getpid(), "import_s": round(self.import_s, 3),
                "forkserver_s": round(self.forkserver_s, 3), "started": self._engine is not None}

    # -- start ---------------------------------------------------------------------------------

    async def start(self, spec: dict) -> dict:
        """Start the engine. spec: served_model_id, and snapshot_url or capture (snapshot on first
        boot: source_dir, tp, store_url, name, snapshot_id); overrides
        (vLLM engine args), verify, gpu_ids (GPU replicas: the devices of the replica's bundles),
        placement_group (GPU TP: the replica's group, so vLLM's Ray workers use its bundles).
        Returns the marks restore_done / engine_ready (time.time()) and engine facts."""
        from argparse import Namespace

        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.v1.engine.async_llm import AsyncLLM

        if self._engine is not None:
            raise RuntimeError("engine already started in this host")
        if spec.get("gpu_ids"):
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec["gpu_ids"])
        overrides = dict(spec.get("overrides") or {})
        error_file = None
        capture = None
        first_boot = None
        if spec.get("capture"):
            # Snapshot on first boot, one engine boot: this engine's workers write their ranks
            # while loading from the source, the snapshot is committed once the engine is up,
            # and the same engine then serves.
            from snapshots.engine import begin_capture
            from snapshots.errors import SnapshotExists

            c = spec["capture"]
            try:
                capture = await asyncio.to_thread(
                    begin_capture, c["source_dir"], tp=int(c["tp"]), store_url=c["store_url"], name=c["name"],
                    snapshot_id=c["snapshot_id"], **overrides)
                kwargs, first_boot = capture.engine_kwargs(), "wrote_snapshot"
            except SnapshotExists:
                # Another replica claimed the id and writes it; this one serves from the source.
                log.info("thawline: %s/%s is being written by another replica; serving from %s",
                         c["name"], c["snapshot_id"], c["source_dir"])
                kwargs = {"model": c["source_dir"], "tensor_parallel_size": int(c["tp"]), **overrides}
                first_boot = "served_from_source"
        elif spec.get("snapshot_url"):
            from snapshots.engine import engine_kwargs
            from snapshots.vllm_loader import ERROR_FILE_ENV

            # Resolves the snapshot, materialises engine/hf + compile cache from the node cache,
            # starts the weight prefetch, sets VLLM_CACHE_ROOT/NCCL_*; the recorded KV size
            # (num_gpu_blocks_override / kv_cache_memory_bytes) makes vLLM skip memory profiling.
            kwargs = engine_kwargs(spec["snapshot_url"], verify=bool(spec.get("verify", False)), **overrides)
            fd, error_file = tempfile.mkstemp(prefix="thawline-load-error-")
            os.close(fd)
            os.unlink(error_file)  # the loader creates it exclusively on failure
            os.environ[ERROR_FILE_ENV] = error_file
        else:
            raise ValueError("engine spec needs snapshot_url or capture")
        restore_done = time.time()

        served = spec["served_model_id"]
        args = Namespace(**copy.deepcopy(self._frontend_defaults))
        args.model = str(kwargs["model"])
        args.served_model_name = [served]
        kwargs["served_model_name"] = [served]
        engine_args = AsyncEngineArgs(**kwargs)
        vllm_config = engine_args.create_engine_config()
        config_done = time.time()
        if spec.get("placement_group") is not None:
            vllm_config.parallel_config.placement_group = spec["placement_group"]
        try:
            engine = AsyncLLM.from_vllm_config(vllm_config, disable_log_stats=True)
        except Exception as exc:
            if capture is not None:
                capture.abort()
            reason = Path(error_file).read_text() if error_file and os.path.exists(error_file) else None
            if reason:
                # Only a snapshot start sets the error file the loader writes its reason to.
                raise RuntimeError(f"engine start from {spec['snapshot_url']} failed: {reason}") from exc
            raise
        finally:
            if error_file and os.path.exists(error_file):
                os.unlink(error_file)
        snapshot_url = None
        if capture is not None:
            try:
                infos = await engine.collective_rpc("thawline_engine_info")
                snapshot_url = await asyncio.to_thread(capture.commit, infos, vllm_config.model_config)
            except BaseException:
                capture.abort(keep_engine_dir=True)
                engine.shutdown()
                raise
        engine_done = time.time()
        state = State()
        await init_app_state(engine, state, args, supported_tasks=await engine.get_supported_tasks())
        serving_done = time.time()
        self._engine = engine
        self._chat = getattr(state, "openai_serving_chat", None)
        self._completion = getattr(state, "openai_serving_completion", None)
        cache = vllm_config.cache_config
        self.info = {"num_gpu_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
                     "model": str(kwargs["model"]), "load_format": str(kwargs.get("load_format", "auto")),
                     # engine_init split: vLLM config, AsyncLLM (EngineCore + workers + weights +
                     # KV cache), OpenAI serving state
                     "engine_init_detail_s": {"config": round(config_done - restore_done, 3),
                                              "engine": round(engine_done - config_done, 3),
                                              "serving_state": round(serving_done - engine_done, 3)}}
        if first_boot:
            self.info["first_boot"] = first_boot
        if snapshot_url:
            self.info["snapshot_url"] = snapshot_url
        return {"restore_done": restore_done, "engine_ready": serving_done, **self.info}

    # -- requests ------------------------------------------------------------------------------

    def _request(self, request: dict, *, stream: bool):
        endpoint = request.get("endpoint")
        body = dict(request.get("body") or {})
        if endpoint not in ENDPOINTS:
            return None, _error(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        if self._engine is None:
            return None, _error("engine not started", 503, "service_unavailable")
        body["stream"] = stream
        if stream:
            # The handle protocol: the last chunk always carries usage (callers strip it).
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            if endpoint == "chat":
                from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

                return (self._chat.create_chat_completion, ChatCompletionRequest(**body)), None
            from vllm.entrypoints.openai.completion.protocol import CompletionRequest

            return (self._completion.create_completion, CompletionRequest(**body)), None
        except Exception as e:  # pydantic validation of the body: the client's mistake
            return None, _error(f"invalid {endpoint} request: {e}".replace("\n", " ")[:2000])

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

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
