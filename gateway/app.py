"""The gateway's HTTP surface: a plain ASGI app (no framework on the hot path).

Served by a Ray Serve ingress replica (serve_apps/gateway.py), either behind Serve's HTTP proxy or,
with RAY_SERVE_THROUGHPUT_OPTIMIZED=1, by the replica's own uvicorn (direct ingress). A framework
router and per-request pydantic parsing cost more than the rest of the request here, so routing is
one dict lookup and bodies are checked by gateway/validate.py.

Per request: read body (size-capped) -> key -> route -> budget -> limiter admit -> dispatch down
the chain -> respond (JSON or SSE) -> settle the limiter -> ledger row. Nothing on that path makes
a remote Ray call when leases suffice (see gateway/limits) and the breaker is read locally.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

import orjson

from gateway import sse
from gateway.breaker import BreakerSet
from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher, Trace
from gateway.errors import AuthError, BadRequest, GatewayError, NotFound, PayloadTooLarge
from gateway.keys import KeyStore
from gateway.limits.bounds import apply_route_bounds
from gateway.openapi import openapi_document
from gateway.providers import build_provider
from gateway.providers.base import CHAT, COMPLETIONS, EMBEDDINGS, Provider, Response, Usage
from gateway.providers.http import close_session
from gateway.router import CompiledRoute, compile_routes
from gateway.validate import CHECKS

log = logging.getLogger("thawline.gateway")

_JSON_HDR = (b"content-type", b"application/json")
_SSE_HDRS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
             (b"x-accel-buffering", b"no")]


class _ClientGone(Exception):
    pass


def _hdr_list(d: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in d.items()]


async def _send_json(send, status: int, payload: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [_JSON_HDR, (b"content-length", str(len(payload)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def send_error(send, e: GatewayError) -> None:
    await _send_json(send, e.status, e.body(), _hdr_list(e.headers))


async def read_body(receive, max_body: int, content_length: bytes | None = None) -> bytes:
    """The request body, at most `max_body` bytes, else PayloadTooLarge (413).

    Chunks are kept in a list and joined once: `body += chunk` copies the whole body again per
    ASGI message, quadratic in a body that arrives in many small messages. The size is checked
    per message, so an oversized body is refused as soon as it passes the limit, without
    receiving (or buffering) the rest of it.
    """
    if content_length is not None and content_length.isdigit() and int(content_length) > max_body:
        raise PayloadTooLarge(f"request body is {int(content_length)} bytes; the limit is {max_body}")
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_body:
                raise PayloadTooLarge(f"request body exceeds the limit of {max_body} bytes")
            chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


def _text_of(body: dict, endpoint: str) -> str:
    """Response text, for local token counts when a provider reports no usage."""
    out = []
    for c in body.get("choices") or []:
        if endpoint == CHAT:
            out.append(((c.get("message") or {}).get("content")) or "")
        else:
            out.append(c.get("text") or "")
    return "".join(out)


class _Sink:
    """StreamSink over ASGI `send`: headers go out with the first real token."""

    __slots__ = ("_send", "extra", "started")

    def __init__(self, send, extra: list[tuple[bytes, bytes]]):
        self._send, self.extra, self.started = send, extra, False

    async def start(self, target, attempts: int, failures: list[str] | None = None) -> None:
        self.started = True
        headers = [*_SSE_HDRS, *self.extra, (b"x-thawline-target", target.id.encode()),
                   (b"x-thawline-attempts", str(attempts).encode())]
        if failures:
            headers.append((b"x-thawline-fallbacks", ",".join(failures).encode()))
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def send(self, chunk: dict) -> None:
        try:
            await self._send({"type": "http.response.body", "body": sse.encode(chunk), "more_body": True})
        except OSError:
            # the client hung up (uvicorn raises ClientDisconnected, an OSError): stop the
            # upstream stream too; what was produced is still billed
            raise _ClientGone() from None


class Gateway:
    """One per replica. `limits` / `costs` follow the LimitClient / CostTracker seam
    (docs/INTERFACES.md, "gateway internals"); `breakers` is the replica's local BreakerSet
    (mirrored to the shared BreakerBoard actor by the deployment)."""

    def __init__(self, cfg: GatewayConfig, *, limits: Any, costs: Any, breakers: BreakerSet | None = None,
                 metrics: Any = None, providers: dict[str, Provider] | None = None,
                 on_shutdown: list[Callable[[], Awaitable[None]]] | None = None):
        self.cfg = cfg
        self.keys = KeyStore(cfg)
        self.routes: dict[str, CompiledRoute] = compile_routes(cfg)
        self.providers = providers or {n: build_provider(n, p) for n, p in cfg.providers.items()}
        self.breakers = breakers or BreakerSet(cfg.breaker)
        self.limits, self.costs, self.metrics = limits, costs, metrics
        if limits is not None and costs is not None and getattr(limits, "budgets", None):
            # budget reservations at the broker also count the spend the ledger already knows of
            limits.spend_floor = costs.period_spend
        self.dispatcher = Dispatcher(self.providers, self.breakers, cfg.retry, metrics)
        self.max_body = cfg.server.max_body_bytes
        self._on_shutdown = on_shutdown or []
        self._openapi = orjson.dumps(openapi_document({
            ep: [a for a, r in self.routes.items()
                 if any(self.providers[t.provider_name].supports(ep) for tier in r.tiers for t in tier)]
            for ep in (CHAT, COMPLETIONS, EMBEDDINGS)}))
        self._started = False
        self._handlers: dict[tuple[str, str], Callable] = {
            ("POST", "/v1/chat/completions"): self._inference(CHAT),
            ("POST", "/v1/completions"): self._inference(COMPLETIONS),
            ("POST", "/v1/embeddings"): self._inference(EMBEDDINGS),
            ("GET", "/v1/models"): self._models,
            ("GET", "/v1/usage"): self._usage,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/openapi.json"): self._openapi_doc,
            ("GET", "/healthz"): self._health,
        }
        self._paths = {p for _, p in self._handlers}
        from gateway.costs.tokens import count_text_tokens, estimate_prompt_tokens, estimate_request_tokens
        self._count_tokens, self._estimate = count_text_tokens, estimate_request_tokens
        self._estimate_prompt = estimate_prompt_tokens

    # ---- lifecycle -------------------------------------------------------------------------
    async def startup(self) -> None:
        if self._started:
            return
        self._started = True
        for p in self.providers.values():
            await p.start()

    async def shutdown(self) -> None:
        """Graceful: hand leases back, flush the ledger, close upstream connections."""
        for fn in self._on_shutdown:
            try:
                await fn()
            except Exception:
                log.exception("gateway shutdown hook failed")
        for p in self.providers.values():
            await p.close()
        if self.limits is not None:
            await self.limits.close()
        if self.costs is not None:
            await self.costs.close()
        await close_session()

    # ---- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        typ = scope["type"]
        if typ == "http":
            path = scope["path"]
            root = scope.get("root_path")
            if root and path.startswith(root):
                # mounted under a Serve route_prefix: uvicorn/Serve keep the prefix in `path`
                path = path[len(root):]
            handler = self._handlers.get((scope["method"], path))
            if handler is None:
                if path in self._paths:
                    e = GatewayError(f"method {scope['method']} not allowed on {path}", status=405,
                                     type="invalid_request_error", code="method_not_allowed")
                else:
                    e = NotFound(f"unknown path {path}", code="unknown_url")
                await send_error(send, e)
                return
            if not self._started:
                await self.startup()
            try:
                await handler(scope, receive, send)
            except GatewayError as e:
                await send_error(send, e)
            except _ClientGone:
                return
        elif typ == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    try:
                        await self.startup()
                    except Exception as e:
                        await send({"type": "lifespan.startup.failed", "message": str(e)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # ---- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _headers(scope) -> dict[bytes, bytes]:
        return {k: v for k, v in scope["headers"] if k in (b"authorization", b"content-length")}

    async def _read_body(self, receive, headers: dict[bytes, bytes]) -> bytes:
        return await read_body(receive, self.max_body, headers.get(b"content-length"))

    @staticmethod
    def _auth(headers: dict[bytes, bytes]) -> str | None:
        v = headers.get(b"authorization")
        return v.decode("latin-1") if v is not None else None

    # ---- inference -------------------------------------------------------------------------
    def _inference(self, endpoint: str):
        check = CHECKS[endpoint]

        async def handle(scope, receive, send) -> None:
            headers = self._headers(scope)
            key = self.keys.authenticate(self._auth(headers))
            raw = await self._read_body(receive, headers)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"request body is not valid JSON: {e}", code="invalid_json") from None
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object", code="invalid_json")
            check(body)
            alias = body["model"]
            route = self.routes.get(alias)
            if route is None:
                raise NotFound(f"The model `{alias}` does not exist", param="model")
            self.keys.check_route(key, alias)
            # clamp both max_tokens fields, bound n, refuse price/retention-changing options: what
            # is pre-charged and reserved below is what the upstream receives (gateway/limits/bounds.py)
            max_out = apply_route_bounds(body, endpoint, route.cfg)
            if self.costs is not None:
                self.costs.check_budget(key_id=key.id, route=alias)
            est = self._estimate(body, endpoint=endpoint, max_tokens_cap=route.cfg.max_tokens_cap)
            worst = 0.0
            if self.costs is not None and self.costs.budgets:
                n = body.get("n") if endpoint != EMBEDDINGS else None
                worst = self.costs.worst_case_usd(
                    [(t.provider_name, t.model) for tier in route.tiers for t in tier],
                    prompt_tokens=self._prompt_tokens(body, endpoint), max_output_tokens=max_out * (n or 1))
            adm = (await self.limits.admit(key_id=key.id, route=alias, est_tokens=est, est_cost_usd=worst)
                   if self.limits else None)
            extra = _hdr_list(adm.headers) if adm is not None and adm.headers else []
            trace = Trace()
            actual = 0
            try:
                if body.get("stream") and endpoint != EMBEDDINGS:
                    actual = await self._stream(scope, send, endpoint, body, key.id, route, trace, extra)
                else:
                    actual = await self._call(send, endpoint, body, key.id, route, trace, extra)
            finally:
                if adm is not None:
                    # the budget reservation settles at what the answer cost (0 without one)
                    await self.limits.settle(adm, actual_tokens=actual, actual_cost_usd=trace.cost_usd)

        return handle

    def _ledger(self, *, key_id: str, route: CompiledRoute, trace: Trace, endpoint: str, body: dict,
                stream: bool, status: str, usage_by_rec: list[tuple[Any, Usage | None, str]]) -> int:
        """Writes one ledger row per attempt that used tokens (or one error row); returns tokens."""
        if self.costs is None:
            return sum((u.prompt_tokens + u.completion_tokens) for _, u, _ in usage_by_rec if u)
        from gateway.costs.schema import LedgerRow
        latency = (time.perf_counter() - trace.started_at) * 1000.0
        total = 0
        rows = 0
        for target, usage, st in usage_by_rec:
            if usage is None:
                continue
            trace.cost_usd += self.costs.record(LedgerRow(
                key_id=key_id, route=route.alias, target=target.provider_name, model=target.model,
                tokens_in=usage.prompt_tokens, tokens_out=usage.completion_tokens, tokens_cached=usage.cached_tokens,
                latency_ms=latency, ttft_ms=trace.ttft_ms, status=st, attempts=trace.attempts,
                estimated=usage.estimated, stream=stream)).cost_usd
            total += usage.prompt_tokens + usage.completion_tokens
            rows += 1
        if rows == 0:
            t = trace.target
            self.costs.record(LedgerRow(
                key_id=key_id, route=route.alias, target=t.provider_name if t else "", model=t.model if t else "",
                latency_ms=latency, ttft_ms=trace.ttft_ms, status=status, attempts=trace.attempts, stream=stream))
        return total

    def _prompt_tokens(self, body: dict, endpoint: str) -> int:
        return self._estimate_prompt(body, endpoint=endpoint)

    async def _call(self, send, endpoint: str, body: dict, key_id: str, route: CompiledRoute, trace: Trace,
                    extra: list) -> int:
        status = "error"
        resp: Response | None = None
        try:
            resp = await self.dispatcher.call(route, endpoint, body, trace)
            status = "ok"
        finally:
            recs = []
            for r in trace.records:
                u = r.usage
                if u is None and r.status == "ok" and resp is not None:
                    u = Usage(self._prompt_tokens(body, endpoint),
                              self._count_tokens(_text_of(resp.body, endpoint)), 0, True)
                    if isinstance(resp.body.get("usage"), (dict, list, str, int, float)):
                        # the upstream's usage was unbelievable (see Usage.from_openai): the
                        # client gets the counted one, never negative or non-numeric counts
                        resp.body["usage"] = u.to_openai()
                        resp.raw = None
                recs.append((r.target, u, r.status))
            actual = self._ledger(key_id=key_id, route=route, trace=trace, endpoint=endpoint, body=body,
                                  stream=False, status=status if resp is not None else "error", usage_by_rec=recs)
        payload = resp.raw if resp.raw is not None else orjson.dumps(resp.body)
        hdrs = [*extra, (b"x-thawline-target", trace.target.id.encode()),
                (b"x-thawline-attempts", str(trace.attempts).encode())]
        if trace.failures:
            hdrs.append((b"x-thawline-fallbacks", ",".join(trace.failures).encode()))
        await _send_json(send, 200, payload, hdrs)
        return actual

    async def _stream(self, scope, send, endpoint: str, body: dict, key_id: str, route: CompiledRoute,
                      trace: Trace, extra: list) -> int:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        sink = _Sink(send, extra)
        status = "error"
        try:
            await self.dispatcher.stream(route, endpoint, body, sink, trace)
            status = "ok"
        except GatewayError as e:
            if not sink.started:
                raise   # nothing sent yet: a plain JSON error response with its status
            # output already went out under a 200: end with an error event, never with [DONE]
            await send({"type": "http.response.body", "body": e.sse_event(), "more_body": False})
        except (asyncio.CancelledError, _ClientGone):
            status = "cancelled"   # client went away; still bill what was produced
            raise
        finally:
            recs = self._stream_records(trace, body, endpoint, status)
            actual = self._ledger(key_id=key_id, route=route, trace=trace, endpoint=endpoint, body=body,
                                  stream=True, status=status, usage_by_rec=recs)
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

    def _stream_records(self, trace: Trace, body: dict, endpoint: str, status: str) -> list:
        """(target, usage, status) per attempt; usage counted locally where none was reported
        but output was produced (a cut stream's partial answer is billed too)."""
        out = []
        for r in trace.records:
            u = r.usage
            if u is None and (r.text or r.status == "ok"):
                u = Usage(self._prompt_tokens(body, endpoint), self._count_tokens(r.text), 0, True)
            st = r.status if status == "ok" else ("cancelled" if status == "cancelled" else "error")
            out.append((r.target, u, st))
        return out

    # ---- other endpoints -------------------------------------------------------------------
    async def _models(self, scope, receive, send) -> None:
        key = self.keys.authenticate(self._auth(self._headers(scope)))
        allowed = self.keys._allowed.get(key.id)
        data = [{"id": a, "object": "model", "created": 0, "owned_by": "thawline"}
                for a in self.routes if allowed is None or a in allowed]
        await _send_json(send, 200, orjson.dumps({"object": "list", "data": data}))

    async def _usage(self, scope, receive, send) -> None:
        if not self.keys.is_admin(self._auth(self._headers(scope))):
            raise AuthError("admin key required", code="admin_key_required")
        qs = parse_qs(scope.get("query_string", b"").decode())
        group_by = qs.get("group_by", ["key"])[0]
        since_s = qs.get("since", [None])[0]
        since = None
        if since_s:
            try:
                since = (datetime.fromtimestamp(float(since_s), tz=timezone.utc) if since_s.replace(".", "").isdigit()
                         else datetime.fromisoformat(since_s.replace("Z", "+00:00")))
            except (ValueError, OverflowError, OSError):
                # OverflowError / OSError: unix seconds beyond what a datetime can hold
                raise BadRequest("'since' must be an ISO-8601 time or unix seconds", param="since") from None
            if since.tzinfo is None:
                since = since.replace(tzinfo=timezone.utc)
        if self.costs is None:
            rows: list = []
        else:
            try:
                rows = await self.costs.query(group_by=group_by, since=since)
            except ValueError as e:
                raise BadRequest(str(e), param="group_by") from None
        await _send_json(send, 200, orjson.dumps({"object": "list", "group_by": group_by, "data": rows},
                                                 default=str))

    async def _metrics(self, scope, receive, send) -> None:
        # admin only: the series carry per-route and per-target spend and traffic. Prometheus
        # scrapes with `authorization: Bearer <admin key>` (docs/config-gateway.md, ServerConfig)
        if not self.keys.is_admin(self._auth(self._headers(scope))):
            raise AuthError("admin key required", code="admin_key_required")
        if self.metrics is None:
            body, ctype = b"", "text/plain"
        else:
            body, ctype = self.metrics.render()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _openapi_doc(self, scope, receive, send) -> None:
        # the document enumerates every route alias: any caller that may use the API (a valid
        # client key, anonymous when require_auth is off, or the admin key) may read it
        auth = self._auth(self._headers(scope))
        if not self.keys.is_admin(auth):
            self.keys.authenticate(auth)
        await _send_json(send, 200, self._openapi)

    async def _health(self, scope, receive, send) -> None:
        await _send_json(send, 200, b'{"status":"ok"}')
