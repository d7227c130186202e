"""The gateway's HTTP surface: a plain ASGI app (no framework on the hot path).

Served by a Ray Serve ingress replica (serve_apps/gateway.py): behind Serve's HTTP proxy, by Serve's
direct ingress (RAY_SERVE_THROUGHPUT_OPTIMIZED=1), or, with the app's `listen` args (the shipped
AWS mode), by the replica's own uvicorn with no Serve request path (serve_apps/gateway_listener.py). A framework
router and per-request pydantic parsing cost more than the rest of the request here, so routing is
one dict lookup and bodies are checked by gateway/validate.py.

Per request: key -> read body (size-capped) -> route -> bounds -> budget -> limiter admit ->
dispatch down the chain (a stream's chunks go out as they come) -> ledger row -> the answer's end
(the JSON body, or the stream's usage chunk and [DONE]) -> settle the limiter. Nothing on that
path makes a remote Ray call when leases suffice (see gateway/limits) and the breaker is read
locally.

This module is the app itself (construction, lifecycle, the path table); the endpoints are in
inference.py (the request path above) and admin.py (models, usage, metrics, openapi, health),
the ledger rows in accounting.py and the ASGI plumbing (responses, body read, SSE sink) in asgi.py.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import orjson

from gateway.accounting import Accounting
from gateway.admin import AdminEndpoints
from gateway.asgi import ClientGone, send_error, with_header
from gateway.breaker import BreakerSet
from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher
from gateway.errors import GatewayError, NotFound
from gateway.inference import Inference
from gateway.key_auth import KeyAuth
from gateway.openapi import openapi_document
from gateway.providers import build_provider
from gateway.providers.base import CHAT, COMPLETIONS, EMBEDDINGS, Provider
from gateway.providers.http import close_session
from gateway.routes import CompiledRoute, compile_routes
from gateway.tracing import build_tracer
from gateway.ui.endpoint import Dashboard

log = logging.getLogger("thawline.gateway")


class Gateway:
    """One per replica. `limits` / `costs` follow the LimitClient / CostTracker seam
    (docs/INTERFACES.md, "gateway internals"); `breakers` is the replica's local BreakerSet
    (mirrored to the shared BreakerBoard actor by the deployment)."""

    def __init__(self, cfg: GatewayConfig, *, limits: Any, costs: Any, breakers: BreakerSet | None = None,
                 metrics: Any = None, providers: dict[str, Provider] | None = None,
                 on_shutdown: list[Callable[[], Awaitable[None]]] | None = None, tracer: Any = None,
                 costs_factory: Callable[[GatewayConfig], Any] | None = None,
                 drain_first: Callable[[], Awaitable[None]] | None = None):
        self.cfg = cfg
        # builds the cost tracker of a changed `ledger` section (reconfigure); None: keep `costs`
        self._costs_factory = costs_factory
        self._retiring: set[asyncio.Task] = set()     # closing what a reconfigure replaced
        self._retired: list[Provider] = []            # replaced providers not closed yet
        self.keys = KeyAuth(cfg)
        self.key_store = None                 # KeyRecordStore when `key_store` is configured
        self._stored_keys = None                 # the key store's content at the last poll
        self._poll_task: asyncio.Task | None = None
        self._open_key_store(cfg)
        self.routes: dict[str, CompiledRoute] = compile_routes(cfg)
        self.providers = providers or {n: build_provider(n, p) for n, p in cfg.providers.items()}
        self.breakers = breakers or BreakerSet(cfg.breaker)
        self.limits, self.costs, self.metrics = limits, costs, metrics
        self._wire_floors()
        self.dispatcher = Dispatcher(self.providers, self.breakers, cfg.retry, metrics)
        self.max_body = cfg.server.max_body_bytes
        self._on_shutdown = on_shutdown or []
        # runs before anything is closed: requests still arriving outside Serve (the replica's own
        # listener) finish on open providers, leases and ledger
        self._drain_first = drain_first
        openapi = orjson.dumps(openapi_document({
            ep: [a for a, r in self.routes.items()
                 if any(self.providers[t.provider_name].supports(ep) for tier in r.tiers for t in tier)]
            for ep in (CHAT, COMPLETIONS, EMBEDDINGS)}))
        self._started = False
        self._replica: tuple[bytes, bytes] | None = None
        self.tracer = tracer if tracer is not None else build_tracer(cfg.tracing)   # None: tracing off
        inference = Inference(keys=self.keys, routes=self.routes, dispatcher=self.dispatcher, limits=limits,
                              costs=costs, accounting=Accounting(costs), max_body=self.max_body,
                              tracer=self.tracer, keepalive_s=cfg.server.stream_keepalive_s)
        self._inference = inference
        admin = AdminEndpoints(keys=self.keys, routes=self.routes, costs=costs, metrics=metrics, openapi=openapi,
                               control=self)
        self.admin = admin
        self.dashboard = Dashboard(self)      # GET /ui (admin key; see gateway/ui/endpoint.py)
        self._handlers: dict[tuple[str, str], Callable] = {
            ("POST", "/v1/chat/completions"): inference.handler(CHAT),
            ("POST", "/v1/completions"): inference.handler(COMPLETIONS),
            ("POST", "/v1/embeddings"): inference.handler(EMBEDDINGS),
            ("GET", "/v1/models"): admin.models,
            ("GET", "/v1/usage"): admin.usage,
            ("GET", "/metrics"): admin.metrics_text,
            ("GET", "/openapi.json"): admin.openapi_doc,
            ("GET", "/healthz"): admin.health,
            ("GET", "/ui"): self.dashboard.handle,
        }
        self._paths = {p for _, p in self._handlers}
        # these assemble their answers' headers themselves, the replica's id included
        # (gateway/response_headers.py): no per-request `send` wrapper for them
        self._self_headed = frozenset(self._handlers[("POST", p)] for p in
                                      ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"))

    @property
    def replica_header(self) -> tuple[bytes, bytes] | None:
        """x-thawline-replica on every answer when set (the Serve deployment sets it, see
        response_headers.replica_header): which replica answered, for operators and tests."""
        return self._replica

    @replica_header.setter
    def replica_header(self, header: tuple[bytes, bytes] | None) -> None:
        self._replica = self._inference.replica = header

    # ---- live configuration ----------------------------------------------------------------
    def _wire_floors(self) -> None:
        """Budget reservations at the broker also count the spend the ledger already knows of,
        with its accelerator-priced part apart (the broker never settles that part itself)."""
        lim, costs = self.limits, self.costs
        if lim is not None and costs is not None and getattr(lim, "budgets", None):
            lim.spend_floor = costs.period_spend
            lim.local_floor = getattr(costs, "period_local_spend", None)

    def _open_key_store(self, cfg: GatewayConfig) -> None:
        ks = cfg.key_store
        if ks is None:
            self.key_store = None
            return
        from gateway.key_records import KeyRecordStore
        self.key_store = KeyRecordStore(ks.url, ks.storage_options)
        self._poll_s = ks.poll_interval_s

    def _apply(self) -> None:
        """Keys, limits and budgets from gateway.yaml overlaid with the key store's records."""
        snap = self._stored_keys
        dynamic = snap.key_configs() if snap is not None else []
        self.keys.configure(self.cfg, dynamic)
        overrides = snap.routes if snap is not None else {}
        route_limits, budgets = {}, {}
        for alias, r in self.cfg.routes.items():
            ov = overrides.get(alias)
            lim = ov.limits if ov is not None and ov.limits is not None else r.limits
            bud = ov.budget if ov is not None and ov.budget is not None else r.budget
            if lim is not None:
                route_limits[alias] = lim
            if bud is not None:
                budgets[f"route:{alias}"] = bud
        key_limits = {k.id: k.limits for k in self.keys.all_keys.values() if k.limits is not None}
        budgets.update({f"key:{k.id}": k.budget for k in self.keys.all_keys.values() if k.budget is not None})
        if self.limits is not None and hasattr(self.limits, "reconfigure"):
            self.limits.reconfigure(route_limits, key_limits, budgets)
            self._wire_floors()
        if self.costs is not None:
            self.costs.budgets = budgets
            if hasattr(self.costs, "adapter_budgets"):
                self.costs.adapter_budgets = {}   # refilled from the new routes by the next requests

    async def refresh_keys(self) -> None:
        """Re-read the key store now (the poller calls this; the admin API after each write)."""
        if self.key_store is None:
            return
        snap = await asyncio.to_thread(self.key_store.read_all)
        if snap != self._stored_keys:
            self._stored_keys = snap
            self._apply()

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh_keys()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("key store poll failed; keeping the last keys read")
            await asyncio.sleep(self._poll_s)

    def reconfigure(self, cfg: GatewayConfig) -> None:
        """Apply a changed gateway.yaml in place (Serve's `reconfigure`): requests in flight keep
        the route, provider and limit objects they started with; new requests see the new ones.

        All or nothing: everything new (providers, routes, the key store and its keys, the cost
        tracker of a changed `ledger`) is built first; if any of it fails, this raises and the old
        configuration keeps serving, whole. The swap itself has no await, so no request sees half
        of it. Replaced providers are closed once requests that started on them have run out."""
        staged = self._stage(cfg)
        self._swap(cfg, staged)

    def _stage(self, cfg: GatewayConfig) -> dict[str, Any]:
        old = self.cfg
        out: dict[str, Any] = {"providers": {n: build_provider(n, p) for n, p in cfg.providers.items()
                                             if n not in self.providers or old.providers.get(n) != p},
                               "routes": compile_routes(cfg)}
        if cfg.key_store != old.key_store:
            store = None
            if cfg.key_store is not None:
                from gateway.key_records import KeyRecordStore
                store = KeyRecordStore(cfg.key_store.url, cfg.key_store.storage_options)
                out["stored_keys"] = store.read_all()    # unreachable or unreadable: raise now
            out["key_store"] = store
        if cfg.ledger != old.ledger and self._costs_factory is not None:
            out["costs"] = self._costs_factory(cfg)
        return out

    def _swap(self, cfg: GatewayConfig, staged: dict[str, Any]) -> None:
        old = self.cfg
        for n, prov in staged["providers"].items():
            prev = self.providers.get(n)
            if prev is not None and getattr(prev.cfg, "app", None) == getattr(prov.cfg, "app", None):
                prov.adapters = prev.adapters   # the same app's listing until the new one has polled
        retired = [self.providers[n] for n in staged["providers"] if n in self.providers]
        retired += [self.providers.pop(n) for n in [n for n in self.providers if n not in cfg.providers]]
        self.providers.update(staged["providers"])
        for alias in [a for a in self.routes if a not in staged["routes"]]:
            del self.routes[alias]
        self.routes.update(staged["routes"])
        self.dispatcher.retry = cfg.retry
        self.max_body = self._inference.max_body = cfg.server.max_body_bytes
        self._inference.keepalive_s = cfg.server.stream_keepalive_s
        self.cfg = cfg
        if "key_store" in staged:
            self.key_store = staged["key_store"]
            self._stored_keys = staged.get("stored_keys")
            if cfg.key_store is not None:
                self._poll_s = cfg.key_store.poll_interval_s
            if self._poll_task is not None:
                self._poll_task.cancel()
                self._poll_task = None
        old_costs = self._set_costs(staged["costs"]) if "costs" in staged else None
        self._apply()
        if self._started:
            loop = asyncio.get_running_loop()
            for prov in staged["providers"].values():
                loop.create_task(prov.start())
            if self.key_store is not None and self._poll_task is None:
                self._poll_task = loop.create_task(self._poll())
            grace = max((t.first_token_timeout_s + t.timeout_s for r in old.routes.values() for t in r.targets),
                        default=0.0)
            self._retire(retired, old_costs, grace)

    def _set_costs(self, costs: Any) -> Any:
        old, self.costs = self.costs, costs
        self._inference.costs = self.admin.costs = costs
        self._inference.accounting = Accounting(costs)
        self._wire_floors()
        return old

    def _retire(self, providers: list[Provider], costs: Any, grace_s: float) -> None:
        """Close what a reconfigure replaced: the old cost tracker at once (its final push), the
        providers after `grace_s` (no request started on them outlives its target's timeouts)."""
        self._retired += providers

        async def close() -> None:
            if costs is not None:
                await costs.close()
            await asyncio.sleep(grace_s)
            for p in providers:
                self._retired.remove(p)
                await p.close()
        task = asyncio.get_running_loop().create_task(close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # ---- lifecycle -------------------------------------------------------------------------
    async def startup(self) -> None:
        if self._started:
            return
        self._started = True
        for p in self.providers.values():
            await p.start()
        if hasattr(self.costs, "start"):
            self.costs.start()     # its periodic sync also carries traffic counters (a 429 writes no row)
        if self.key_store is not None and self._poll_task is None:
            await self.refresh_keys()
            self._poll_task = asyncio.get_running_loop().create_task(self._poll())

    async def shutdown(self) -> None:
        """Graceful: finish what `drain_first` drains, hand leases back, flush the ledger, close
        upstream connections."""
        if self._drain_first is not None:
            try:
                await self._drain_first()
            except Exception:
                log.exception("gateway drain before shutdown failed")
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        for task in list(self._retiring):   # close what a reconfigure replaced now, not after its grace
            task.cancel()
        for p in self._retired:
            await p.close()
        self._retired.clear()
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
        if self.tracer is not None:
            await self.tracer.close()
        if self.metrics is not None and hasattr(self.metrics, "flush"):
            self.metrics.flush()            # counts summed for Ray's export since its last hand-over
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
            if handler is None and path.startswith("/v1/admin/"):
                handler = self.admin.manage
            if handler is None:
                if self._replica is not None:
                    send = with_header(send, self._replica)
                if path in self._paths:
                    e = GatewayError(f"method {scope['method']} not allowed on {path}", status=405,
                                     type="invalid_request_error", code="method_not_allowed")
                else:
                    e = NotFound(f"unknown path {path}", code="unknown_url")
                await send_error(send, e)
                return
            if not self._started:
                await self.startup()
            replica = self._replica
            if replica is not None and handler not in self._self_headed:
                send = with_header(send, replica)
                replica = None                  # the wrapper adds it to an error answer too
            try:
                await handler(scope, receive, send)
            except GatewayError as e:
                await send_error(send, e, replica)
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
