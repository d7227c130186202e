"""LLMRouter: the always-on, model-less ingress of an LLM app.

It holds no engine (num_cpus=0, imports neither torch nor vLLM), so it stays up while the
LLMServer deployment is at zero. For each request it:
- waits, bounded by `cold_start_max_wait_s` (a request may lower it: header
  x-thawline-max-wait-s, or max_wait_s in a handle request, gateway/llm_protocol.py), for an
  LLMServer replica (a `ready()` call that queues at zero and so makes Serve's autoscaler start
  one); past the bound: HTTP 503 `cold_start_timeout` in OpenAI's error shape (handle calls raise
  ColdStartTimeout);
- when the app parks engines (`parked_memory_gb`) and no replica answers `ready()` within
  PARKED_PROBE_S, answers from an engine parked in a node's warm pool instead, at once, while the
  queued `ready()` call still makes Serve start a replica (which adopts that engine);
- forwards the OpenAI body through the server's handle, streaming chunk by chunk;
- after the first token of a request that waited for a cold start, logs that cold start's
  timeline as one structured line and records it in a Prometheus histogram.

HTTP: POST /v1/chat/completions, POST /v1/completions (SSE when stream=true), GET /v1/models,
GET /thawline/state (cold/warm, last cold-start timeline with its marks, node-join prewarm
records; without waking the model). Every HTTP route is closed unless the app's args open it
(http_auth.py: a bearer token, or an explicit opt-out); the handle API is not affected.
Handle (for the gateway): generate(request) -> dict, generate_stream(request) -> chunks.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from gateway import cold_start_phases as cs
from gateway.llm_protocol import (
    ColdStartTimeout,
    HandleRequest,
    LLMAppError,
    app_error_in,
    cold_start_timeout,
    error_body,
    max_wait_from,
    model_not_found,
    ADAPTER_SEPARATOR,
)
from gateway.names import NAMESPACE, warm_pool_name
from gateway.readiness import CACHED, COLD, PARKED, get_or_create_board
from gateway.response_headers import MAX_WAIT_S
from serve_apps.llm.args import LLMAppArgs, adapter_location, parked_key
from serve_apps.llm.http_auth import check_http_access
from serve_apps.llm.prewarm import Prewarmer
from serve_apps.llm.snapshot_ahead import SnapshotAhead
from serve_apps.llm.sse import sse_frames
from serve_apps.llm.warm_pool import host_stream
from serve_apps.llm.timeline import log_line

log = logging.getLogger("thawline.serve")

api = FastAPI(title="thawline LLM app")
# Lowers cold_start_max_wait_s for one request (seconds).
MAX_WAIT_HEADER = MAX_WAIT_S

# Histogram boundaries (s): from a parked engine's answer to a big-model first boot.
_BOUNDARIES = [0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300]
# A warm replica answers ready() within milliseconds; one that has not after this is starting
# (or the app is at zero), and a parked engine answers instead.
PARKED_PROBE_S = 0.05


@serve.ingress(api)
class LLMRouter:
    def __init__(self, server, args: dict) -> None:
        from ray.util import metrics

        self.args = LLMAppArgs.model_validate(args)
        self._server = server
        self._server_stream = server.options(stream=True)
        self.app_name = serve.get_replica_context().app_name
        self._board = get_or_create_board()
        self._logged: set[str] = set()  # replicas whose cold start is already logged
        self._hist = metrics.Histogram(
            "thawline_cold_start_seconds", description="LLM cold start, per phase (phase=total: request to first token).",
            boundaries=_BOUNDARIES, tag_keys=("app", "phase"))
        # Warm pool + snapshot prefetch on every node that can hold a replica: the nodes alive
        # now, and each node the autoscaler adds later, the moment it joins (prewarm.py).
        self._prewarm = Prewarmer(self.app_name, self.args, self._board).start()
        self._park_key = parked_key(self.app_name, self.args)
        self._pools: dict[str, object] = {}  # node id -> its warm pool's handle
        self._wakes: set[asyncio.Task] = set()  # ready() calls kept queued while a parked engine answers
        self._parked_logged = False  # this parked episode's first answer is recorded
        self._ahead = None
        if self.args.snapshot_url:
            self._board.note_snapshot.remote(self.app_name)
            # so a cold replica does not resolve it on the cold path (snapshot_ahead.py)
            self._ahead = SnapshotAhead(self.app_name, self.args.snapshot_url, self._board).start()
        self._adapters = None
        if (where := adapter_location(self.args)) is not None:
            from serve_apps.llm.adapter_listing import AdapterListing

            self._adapters = AdapterListing(self.app_name, *where, self._board, self.args.adapters.list_every_s).start()
        self._router_id = serve.get_replica_context().replica_id.unique_id
        if self.args.parks_engines:
            self._board.note_parked_key.remote(self.app_name, self._park_key, self._router_id)

    def __del__(self) -> None:
        # Serve stops this replica (app deleted or redeployed): no prewarm for it from here on.
        for worker in (getattr(self, "_prewarm", None), getattr(self, "_ahead", None),
                       getattr(self, "_adapters", None)):
            if worker is not None:
                worker.stop()
        if getattr(self, "_router_id", None) is not None and self.args.parks_engines:
            # the app is deleted or redeployed: warm pools stop its parked engines (a newer
            # router's key, already set, stays)
            self._board.forget_parked_key.remote(self.app_name, self._router_id)

    # -- cold start ----------------------------------------------------------------------------

    def _max_wait(self, asked: float | None) -> float:
        """A caller may lower the bound (e.g. the gateway, to spill over sooner), never raise it."""
        bound = self.args.cold_start_max_wait_s
        return bound if asked is None else min(bound, asked)

    async def _wait_ready(self, max_wait_s: float) -> tuple[float, dict | None, object | None]:
        """(request time, the ready replica's info, None), or (request time, None, a parked
        engine host) when the app is starting from zero and an engine is parked for it."""
        t_req = time.time()
        ready = asyncio.get_running_loop().create_task(self._ready())
        if self.args.parks_engines:
            done, _ = await asyncio.wait({ready}, timeout=PARKED_PROBE_S)
            if not done and (host := await self._lend_parked()) is not None:
                self._keep_queued(ready)
                return t_req, None, host
        try:
            info = await asyncio.wait_for(ready, max(0.0, max_wait_s - (time.time() - t_req)))
        except asyncio.TimeoutError:
            raise cold_start_timeout(self.args.served_model_id, max_wait_s) from None
        self._parked_logged = False  # a replica serves: the next parked answer starts a new episode
        return t_req, info, None

    async def _ready(self) -> dict:
        return await self._server.ready.remote()

    def _keep_queued(self, ready: asyncio.Task) -> None:
        """The ready() call stays queued at the server's handle while the parked engine answers:
        it is the load Serve's autoscaler sees, so a replica starts (and adopts the engine)."""
        task = asyncio.get_running_loop().create_task(asyncio.wait_for(ready, self.args.cold_start_max_wait_s))
        self._wakes.add(task)
        task.add_done_callback(lambda t: (self._wakes.discard(t), t.cancelled() or t.exception()))

    async def _lend_parked(self):
        """An engine host parked for this app (same args) in some node's warm pool, or None."""
        import ray

        try:
            for node in await self._board.parked_nodes.remote(self.app_name, self._park_key):
                pool = self._pools.get(node)
                if pool is None:
                    # a blocking GCS lookup: off the event loop that serves requests
                    pool = await asyncio.to_thread(ray.get_actor, warm_pool_name(node), namespace=NAMESPACE)
                    self._pools[node] = pool
                lent = await pool.lend_parked.remote(self._park_key)
                if lent:
                    return lent[0]
        except Exception as e:  # noqa: BLE001 - no parked engine then: wait for a replica
            log.warning("thawline: looking for a parked engine failed: %s: %s", type(e).__name__, e)
        return None

    def _parked_answered(self, t_req: float) -> None:
        """Log and record the first answer of a parked episode (the app at zero, a parked engine
        answering) as this app's cold start: tier parked, request to first token."""
        if self._parked_logged:
            return
        self._parked_logged = True
        full = {cs.REQUEST: t_req, cs.FIRST_TOKEN: time.time()}
        ph = cs.phases(full)
        log.info("thawline: %s answered from a parked engine in %.3f s", self.app_name, ph[cs.TOTAL])
        self._hist.observe(ph[cs.TOTAL], tags={"app": self.app_name, "phase": cs.TOTAL})
        self._board.record_cold_start.remote(self.app_name, {"replica": "", "host": PARKED, "tier": PARKED,
                                                             "phases_s": ph, "marks": full})

    def _first_token(self, t_req: float, info: dict) -> None:
        """Log the cold start this request waited for (once per replica)."""
        marks = info["marks"]
        rid = info["replica_id"]
        if rid in self._logged or marks.get(cs.ENGINE_READY, 0) <= t_req:
            return  # warm request, or this cold start was already logged
        self._logged.add(rid)
        full = {**marks, cs.REQUEST: t_req, cs.FIRST_TOKEN: time.time()}
        if full[cs.PROCESS_START] < t_req:
            # Ray reused a worker process it had started earlier: no process start in this cold
            # start; request -> constructor is all Serve's scheduling.
            full[cs.PROCESS_START] = full[cs.INIT_START]
        host, first_boot = info["info"].get("host"), info["info"].get("first_boot")
        line = log_line(self.app_name, rid, full, host=host, first_boot=first_boot)
        log.info(line)
        print(line, flush=True)  # the replica's stdout reaches the driver and Ray's log files
        ph = cs.phases(full)
        for name, secs in ph.items():
            self._hist.observe(secs, tags={"app": self.app_name, "phase": name})
        tier = PARKED if host == PARKED else COLD if first_boot else CACHED
        self._board.record_cold_start.remote(self.app_name, {"replica": rid, "tier": tier, "phases_s": ph,
                                                             "marks": full, **info["info"]})

    # -- handle API (gateway) ------------------------------------------------------------------

    def _early_fetch(self, req: HandleRequest) -> None:
        """An adapter request starts its adapter's download now (adapter_listing.py); one for an app
        that serves no adapters is a 404 at once, without waking the model."""
        if req.adapter is None:
            return
        if self._adapters is None:
            raise model_not_found(req.adapter)
        self._adapters.fetch_early(req.adapter)

    async def generate(self, request: dict) -> dict:
        """request: a HandleRequest on the wire; raises LLMAppError (503 on cold-start timeout)."""
        req = HandleRequest.from_wire(request)
        self._early_fetch(req)
        t_req, info, parked = await self._wait_ready(self._max_wait(req.max_wait_s))
        server = self._server if parked is None else parked
        out = await server.generate.remote(self._normalise(req))
        err = app_error_in(out)
        if err is not None:
            raise err
        if parked is None:
            self._first_token(t_req, info)
        else:
            self._parked_answered(t_req)
        return out

    async def generate_stream(self, request: dict) -> AsyncIterator[dict]:
        req = HandleRequest.from_wire(request)
        self._early_fetch(req)
        t_req, info, parked = await self._wait_ready(self._max_wait(req.max_wait_s))
        chunks = (self._server_stream.generate_stream.remote(self._normalise(req)) if parked is None
                  else host_stream(parked, self._normalise(req)))
        first = True
        async for chunk in chunks:
            err = app_error_in(chunk)
            if err is not None:
                # before the first chunk: a rejected request (its 4xx); later: the engine failed
                # mid-answer, which the caller must see as a broken stream, not as a chunk
                raise err
            if first:
                first = False
                if parked is None:
                    self._first_token(t_req, info)
                else:
                    self._parked_answered(t_req)
            yield chunk

    def _normalise(self, req: HandleRequest) -> dict:
        """The request for the engine: the body names the served model (one model per app: an
        empty id means it), the adapter goes along; the wait bound stays here."""
        body = req.body if req.body.get("model") else {**req.body, "model": self.args.served_model_id}
        return HandleRequest(req.endpoint, body, adapter=req.adapter).to_wire()

    # -- HTTP ----------------------------------------------------------------------------------

    def _refused(self, request: Request) -> JSONResponse | None:
        refusal = check_http_access(self.args, request.headers.get("authorization"))
        if refusal is None:
            return None
        return JSONResponse(refusal.body, status_code=refusal.status, headers=refusal.headers)

    @api.get("/v1/models")
    async def models(self, request: Request):
        if (refused := self._refused(request)) is not None:
            return refused
        # Answered here, not by vLLM: listing models must not wake a scaled-to-zero app.
        return {"object": "list", "data": [{"id": self.args.served_model_id, "object": "model",
                                            "created": 0, "owned_by": "thawline"}]}

    @api.get("/thawline/state")
    async def state(self, request: Request):
        if (refused := self._refused(request)) is not None:
            return refused
        return {**await self._board.get.remote(self.app_name),
                "last_cold_start": await self._board.last_cold_start.remote(self.app_name),
                "prewarm": await self._board.prewarm.remote(self.app_name)}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self._http("chat", request)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._http("completions", request)

    async def _http(self, endpoint: str, request: Request):
        if (refused := self._refused(request)) is not None:
            return refused  # before the body is read or anything wakes the model
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(error_body("request body is not JSON"), status_code=400)
        if not isinstance(body, dict):
            return JSONResponse(error_body("request body must be a JSON object"), status_code=400)
        req = self._http_request(endpoint, body, request).to_wire()
        if not body.get("stream"):
            try:
                return JSONResponse(await self.generate(req))
            except LLMAppError as e:
                return self._error_response(e)
        # Start the stream before answering 200, so a cold-start timeout or a rejected request
        # is still a proper HTTP error and not an SSE stream that fails.
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        gen = self.generate_stream(req)
        try:
            first = await gen.__anext__()
        except LLMAppError as e:
            return self._error_response(e)
        except StopAsyncIteration:
            first = None
        return StreamingResponse(sse_frames(first, gen, want_usage), media_type="text/event-stream")

    def _http_request(self, endpoint: str, body: dict, request: Request) -> HandleRequest:
        """The app's own HTTP routes address an adapter as the gateway does: "<served model>:<adapter>"."""
        served, model = self.args.served_model_id, str(body.get("model") or "")
        adapter = None
        if model.startswith(served + ADAPTER_SEPARATOR) and len(model) > len(served) + 1:
            adapter, body = model[len(served) + 1:], {**body, "model": served}
        return HandleRequest(endpoint, body, max_wait_from(request.headers.get(MAX_WAIT_HEADER)), adapter)

    @staticmethod
    def _error_response(e: LLMAppError) -> JSONResponse:
        headers = {"retry-after": "5"} if isinstance(e, ColdStartTimeout) else None
        return JSONResponse(e.body, status_code=e.status, headers=headers)
