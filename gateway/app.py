"""The gateway's HTTP surface: a plain ASGI app (no framework on the hot path).

Served by a Ray Serve ingress replica (serve_apps/gateway.py), either behind Serve's HTTP proxy or,
with RAY_SERVE_THROUGHPUT_OPTIMIZED=1, by the replica's own uvicorn (direct ingress). A framework
router and per-request pydantic parsing cost more than the rest of the request here, so routing is
one dict lookup and bodies are checked by gateway/validate.py.

Per request: read body (size-capped) -> key -> route -> budget -> limiter admit -> dispatch down
the chain -> respond (JSON or SSE) -> settle the limiter -> ledger row. Nothing on that path makes
a remote Ray call when leases suffice (see gateway/limits) and the breaker is read locally.

This module is the app itself (construction, lifecycle, the path table); the endpoints are in
inference.py (the request path above) and admin.py (models, usage, metrics, openapi, health),
the ledger rows in accounting.py and the ASGI plumbing (responses, body read, SSE sink) in asgi.py.
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import orjson

from gateway.accounting import Accounting
from gateway.admin import AdminEndpoints
from gateway.asgi import ClientGone, send_error
from gateway.breaker import BreakerSet
from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher
from gateway.errors import GatewayError, NotFound
from gateway.inference import Inference
from gateway.keys import KeyStore
from gateway.openapi import openapi_document
from gateway.providers import build_provider
from gateway.providers.base import CHAT, COMPLETIONS, EMBEDDINGS, Provider
from gateway.providers.http import close_session
from gateway.routes import CompiledRoute, compile_routes

log = logging.getLogger("thawline.gateway")


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
        openapi = orjson.dumps(openapi_document({
            ep: [a for a, r in self.routes.items()
                 if any(self.providers[t.provider_name].supports(ep) for tier in r.tiers for t in tier)]
            for ep in (CHAT, COMPLETIONS, EMBEDDINGS)}))
        self._started = False
        inference = Inference(keys=self.keys, routes=self.routes, dispatcher=self.dispatcher, limits=limits,
                              costs=costs, accounting=Accounting(costs), max_body=self.max_body)
        admin = AdminEndpoints(keys=self.keys, routes=self.routes, costs=costs, metrics=metrics, openapi=openapi)
        self._handlers: dict[tuple[str, str], Callable] = {
            ("POST", "/v1/chat/completions"): inference.handler(CHAT),
            ("POST", "/v1/completions"): inference.handler(COMPLETIONS),
            ("POST", "/v1/embeddings"): inference.handler(EMBEDDINGS),
            ("GET", "/v1/models"): admin.models,
            ("GET", "/v1/usage"): admin.usage,
            ("GET", "/metrics"): admin.metrics_text,
            ("GET", "/openapi.json"): admin.openapi_doc,
            ("GET", "/healthz"): admin.health,
        }
        self._paths = {p for _, p in self._handlers}

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
            except ClientGone:
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
