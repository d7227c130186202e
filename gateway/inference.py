"""The inference endpoints (/v1/chat/completions, /v1/completions, /v1/embeddings).

Per request: read body (size-capped) -> key -> route -> budget -> limiter admit -> dispatch down
the chain -> respond (JSON or SSE) -> ledger rows -> settle the limiter (in a `finally`).

`model` is a route alias, or "<route>:<adapter>" for a LoRA adapter of the route's serve
target(s) (gateway/adapters.py): a set lookup in the serve providers' cached listings and in the
key's scope, then the route's adapter chain (routes.CompiledRoute.for_adapter).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import orjson

from gateway import sse
from gateway.accounting import Accounting
from gateway.adapters import model_not_found_error, split_route
from gateway.asgi import JSON_HDR, ClientGone, auth_header, read_body, request_headers
from gateway.config import KeyConfig
from gateway.costs.tokens import estimate_request_tokens
from gateway.dispatch import Dispatcher, Trace
from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.key_auth import KeyAuth
from gateway.limits.bounds import apply_route_bounds
from gateway.providers.base import CHAT, EMBEDDINGS, Response, Usage
from gateway.response_headers import answer_headers
from gateway.routes import CompiledRoute
from gateway.stream_keepalive import KeepAliveSink
from gateway.validate import CHECKS


class Inference:
    """The request path of the inference endpoints. `limits` / `costs` follow the LimitClient /
    CostTracker seam (docs/INTERFACES.md, "gateway internals"); either may be None."""

    def __init__(self, *, keys: KeyAuth, routes: dict[str, CompiledRoute], dispatcher: Dispatcher,
                 limits: Any, costs: Any, accounting: Accounting, max_body: int, tracer: Any = None,
                 keepalive_s: float | None = None):
        self.keys, self.routes, self.dispatcher = keys, routes, dispatcher
        self.limits, self.costs, self.accounting = limits, costs, accounting
        self.max_body = max_body
        self.keepalive_s = keepalive_s   # gateway.yaml server.stream_keepalive_s
        self.tracer = tracer      # gateway.tracing.RequestTracer, or None: no tracer calls at all
        self.replica: tuple[bytes, bytes] | None = None     # x-thawline-replica, set by the Gateway

    def handler(self, endpoint: str) -> Callable:
        """The ASGI handler of one endpoint (CHAT, COMPLETIONS or EMBEDDINGS)."""
        check = CHECKS[endpoint]

        async def handle(scope, receive, send) -> None:
            headers = request_headers(scope)
            key = self.keys.authenticate(auth_header(headers))
            body = _json_object(await read_body(receive, self.max_body, headers.get(b"content-length")))
            check(body)
            route = self._resolve(key, body["model"])
            alias = route.alias
            adm = await self._admit(body, endpoint, key.id, alias, route)
            rate = adm.headers if adm is not None else None
            trace = Trace()
            actual = 0
            tracer = self.tracer
            if tracer is not None:
                trace.timeline, t_start = tracer.start()
                http_status, err = 200, None
            stream = bool(body.get("stream")) and endpoint != EMBEDDINGS
            try:
                if stream:
                    actual = await self._stream(send, endpoint, body, key.id, route, trace, rate)
                else:
                    actual = await self._call(send, endpoint, body, key.id, route, trace, rate)
            except BaseException as e:
                if tracer is not None:
                    http_status = e.status if isinstance(e, GatewayError) else 499
                    err = str(e)[:200]
                raise
            finally:
                if adm is not None:
                    # the budget reservation settles at what the answer cost (0 without one)
                    await self.limits.settle(adm, actual_tokens=actual, actual_cost_usd=trace.cost_usd)
                if tracer is not None:
                    tracer.finish(trace=trace, start_ns=t_start, endpoint=endpoint, route=alias, key_id=key.id,
                                  stream=stream, http_status=http_status, error=err)

        return handle

    def _resolve(self, key: KeyConfig, model: str) -> CompiledRoute:
        """The chain `model` names for `key`. An adapter that is not listed, or not in the key's
        scope, is the same 404 as an unknown model; a route the key may not use is a 403."""
        route = self.routes.get(model)
        if route is not None:
            self.keys.check_route(key, model)
            return route
        found = split_route(model, self.routes)
        if found is None or not self.routes[found[0]].serve_targets:
            raise model_not_found_error(model)
        alias, adapter = found
        route = self.routes[alias]
        self.keys.check_route(key, alias)
        providers = self.dispatcher.providers
        if not (self.keys.may_use_adapter(key, adapter)
                and any(adapter in providers[t.provider_name].adapters for t in route.serve_targets)):
            raise model_not_found_error(model)
        return route.for_adapter(adapter)

    @staticmethod
    def _client_error(e: GatewayError, route: CompiledRoute) -> GatewayError:
        """An LLM app's own 404 for an adapter (its store no longer has it: the listing was stale)
        is the gateway's 404 for what the client sent, byte for byte."""
        if route.adapter is not None and isinstance(e, NotFound):
            return model_not_found_error(route.model)
        return e

    async def _admit(self, body: dict, endpoint: str, key_id: str, alias: str, route: CompiledRoute) -> Any:
        """Bound the body by the route, check the key's budget and reserve its rate limits and
        worst-case cost: the admission the request settles when it ends (None without limits)."""
        # clamp both max_tokens fields, bound n, refuse price/retention-changing options: what
        # is pre-charged and reserved below is what the upstream receives (gateway/limits/bounds.py)
        max_out = apply_route_bounds(body, endpoint, route.cfg)
        if self.costs is not None:
            self.costs.check_budget(key_id=key_id, route=alias, quota=route.quota)
        est = estimate_request_tokens(body, endpoint=endpoint, max_tokens_cap=route.cfg.max_tokens_cap)
        worst = 0.0
        adapter_budget = route.quota is not None and route.quota.budget is not None
        if self.costs is not None and (self.costs.budgets or adapter_budget):
            n = body.get("n") if endpoint != EMBEDDINGS else None
            worst = self.costs.worst_case_usd(
                [(t.provider_name, t.model) for tier in route.tiers for t in tier],
                prompt_tokens=self.accounting.prompt_tokens(body, endpoint),
                max_output_tokens=max_out * (n or 1))
        return (await self.limits.admit(key_id=key_id, route=alias, est_tokens=est, est_cost_usd=worst,
                                        quota=route.quota) if self.limits else None)

    async def _call(self, send, endpoint: str, body: dict, key_id: str, route: CompiledRoute, trace: Trace,
                    rate: dict[str, str] | None) -> int:
        status = "error"
        resp: Response | None = None
        try:
            resp = await self.dispatcher.call(route, endpoint, body, trace)
            status = "ok"
        except GatewayError as e:
            raise self._client_error(e, route) from None
        finally:
            recs = self.accounting.call_records(trace, resp, body, endpoint)
            actual = self.accounting.record(key_id=key_id, route=route, trace=trace, stream=False,
                                            status=status if resp is not None else "error", recs=recs)
        payload = resp.raw if resp.raw is not None else orjson.dumps(resp.body)
        hdrs = answer_headers([JSON_HDR, (b"content-length", str(len(payload)).encode())], rate, trace.target,
                              trace.attempts, trace.failures, self.replica)
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": payload})
        return actual

    async def _stream(self, send, endpoint: str, body: dict, key_id: str, route: CompiledRoute,
                      trace: Trace, rate: dict[str, str] | None) -> int:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        sink = KeepAliveSink(send, rate, self.replica, self.keepalive_s)
        status = "error"
        try:
            await self.dispatcher.stream(route, endpoint, body, sink, trace)
            status = "ok"
        except GatewayError as e:
            await sink.stop()
            e = self._client_error(e, route)
            if not sink.started:
                raise e from None  # nothing sent yet: a plain JSON error response with its status
            # output already went out under a 200: end with an error event, never with [DONE]
            await send({"type": "http.response.body", "body": e.sse_event(), "more_body": False})
        except (asyncio.CancelledError, ClientGone):
            status = "cancelled"   # client went away; still bill what was produced
            raise
        finally:
            sink.cancel()
            recs = self.accounting.stream_records(trace, body, endpoint, status)
            actual = self.accounting.record(key_id=key_id, route=route, trace=trace, stream=True,
                                            status=status, recs=recs)
        if status == "ok":
            if include_usage:
                # the client's usage covers every attempt that produced tokens (a continued
                # stream used two targets): provider-reported where available, else counted
                usage = Usage()
                for _, u, _ in recs:
                    if u is not None:
                        usage = usage + u
                await sink.send({"id": trace.stream_id or "", "object": "chat.completion.chunk"
                                 if endpoint == CHAT else "text_completion", "created": int(time.time()),
                                 "model": trace.stream_model or "", "choices": [], "usage": usage.to_openai()})
            await send({"type": "http.response.body", "body": sse.DONE, "more_body": False})
        return actual


def _json_object(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return body
