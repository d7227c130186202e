"""The gateway as a Ray Serve app: `serve_apps.gateway:app` (for `serve deploy`) and `build_app`.

A Serve config deploys it with

    applications:
      - name: gateway
        route_prefix: /
        import_path: serve_apps.gateway:app
        args: {config_path: serve_apps/configs/gateway-example.yaml}

Live config changes (Serve's `user_config` idiom): `build_app` also passes the config as the
deployment's `user_config` ({"config": {...}}), and the replicas apply a changed one in place in
`reconfigure()` (keys, routes, limits, budgets, retry, providers) without a restart, so requests in
flight are not dropped. With `serve deploy`, change it under

        deployments:
          - name: gateway
            user_config: {config: {...the new gateway.yaml...}}

(a lightweight update: Serve calls reconfigure on each running replica). Changing `args` instead
is a code change for Serve: it rolls the replicas (gracefully, draining in-flight requests).

The ingress is a plain ASGI app (gateway/app.py), served through Serve's proxy (or Serve's direct
ingress with RAY_SERVE_THROUGHPUT_OPTIMIZED=1) and, with `listen` in the args, by each replica's
own listener on a port the node's gateway replicas share (serve_apps/gateway_listener.py): no
Serve request path, the fastest mode and the one the AWS config ships.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application

from gateway.config import ConfigError, GatewayConfig, expand_store_urls, load_config, parse_config
from serve_apps.gateway_listener import GatewayListenArgs

_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
log = logging.getLogger("thawline.gateway")

# An I/O-bound async ingress: Serve's default of 5 ongoing requests per replica would queue
# requests that cost the replica almost nothing while they wait on upstreams. No Serve access
# log line per request: formatting and writing it costs more CPU than the gateway's own
# pipeline, and every request is already in the cost ledger, the metrics and (when configured)
# the traces. `deployment: {logging_config: {enable_access_log: true}}` turns it back on.
# graceful_shutdown_timeout_s is Serve's default, named here because the shutdown hooks are sized
# against it (the trace exporter's budget, gateway/tracing.py SHUTDOWN_BUDGET_S, is checked to fit).
DEFAULT_DEPLOYMENT_OPTIONS: dict[str, Any] = {"max_ongoing_requests": 2048, "max_queued_requests": 4096,
                                              "logging_config": {"enable_access_log": False},
                                              "graceful_shutdown_timeout_s": 20.0}


class GatewayAppArgs(BaseModel):
    """`args:` of the gateway app in a Serve config file."""

    model_config = ConfigDict(extra="forbid")

    config_path: str | None = Field(None, description="Path to gateway.yaml (absolute, relative to the working "
                                    "directory, or a file name under serve_apps/configs/).")
    config: dict[str, Any] | None = Field(None, description="The gateway config inline, instead of config_path.")
    deployment: dict[str, Any] = Field(default_factory=dict, description="Serve deployment options for the "
                                       "gateway, e.g. {num_replicas: 2}.")
    listen: GatewayListenArgs | None = Field(None, description="Each gateway replica also serves HTTP on this "
                                             "port itself, without Serve's request path "
                                             "(serve_apps/gateway_listener.py); the shipped AWS mode.")

    @model_validator(mode="after")
    def _consistent(self) -> "GatewayAppArgs":
        if (self.config_path is None) == (self.config is None):
            raise ValueError("give exactly one of `config_path` or `config`")
        if self.listen is not None:
            listener_deployment_problem(self.listen, self.deployment)
        return self


# Of the deployment's graceful_shutdown_timeout_s, what the shutdown needs besides the listener's
# drain: Serve's own drain wait (graceful_shutdown_wait_loop_s) before it calls the gateway's
# shutdown, the trace exporter's budget (gateway/tracing.py SHUTDOWN_BUDGET_S), and the leases'
# hand-back plus the ledger's flush.
LEDGER_AND_LEASES_S = 3.0


def listener_deployment_problem(listen: GatewayListenArgs, deployment: dict[str, Any]) -> None:
    """Raise ValueError when the deployment options cannot carry `listen` (pure: no Ray)."""
    from gateway.tracing import SHUTDOWN_BUDGET_S

    if deployment.get("autoscaling_config") is not None or deployment.get("num_replicas") == "auto":
        raise ValueError("gateway `listen` with autoscaling: Serve's autoscaler counts only requests that "
                         "pass through Serve, and the listener's do not; set num_replicas")
    opts = {**DEFAULT_DEPLOYMENT_OPTIONS, **deployment}
    budget = float(opts["graceful_shutdown_timeout_s"])
    reserve = float(opts.get("graceful_shutdown_wait_loop_s", 2.0)) + SHUTDOWN_BUDGET_S + LEDGER_AND_LEASES_S
    if listen.graceful_s + reserve > budget:
        raise ValueError(f"gateway listen.graceful_s {listen.graceful_s:g} s plus the {reserve:g} s that Serve's "
                         f"drain wait, the trace export and the ledger flush need exceed the deployment's "
                         f"graceful_shutdown_timeout_s {budget:g} s: "
                         "lower graceful_s or raise graceful_shutdown_timeout_s")


def resolve_config_path(p: str) -> Path:
    path = Path(p)
    if path.is_absolute() or path.exists():
        return path
    if (_CONFIG_DIR / p).exists():
        return _CONFIG_DIR / p
    raise ConfigError(f"gateway config not found: {p} (looked in {os.getcwd()} and {_CONFIG_DIR})")


@serve.deployment(name="gateway")
@serve.ingress()
class GatewayIngress:
    async def __init__(self, cfg: dict, listen: dict | None = None):
        # imports here: the deployment class is pickled by the driver, the heavy parts are
        # only needed inside the replica
        from gateway.app import Gateway
        from gateway.breaker_actor import BreakerClient
        from gateway.costs.tracker import CostTracker
        from gateway.limits.client import LimitClient
        from gateway.metrics import METRICS
        from gateway.names import breakers_actor_name
        from gateway.response_headers import replica_header
        from serve_apps.gil import use_serving_switch_interval

        use_serving_switch_interval()  # serve_apps/gil.py: a ready request waits <= 0.5 ms for the GIL
        config = parse_config(cfg)
        ctx = serve.get_replica_context()
        app_name = ctx.app_name
        # one breaker board per gateway app: all its replicas share each target's breaker
        self._breakers = BreakerClient(breakers_actor_name(app_name), config.breaker)
        self._breakers.start()
        self._listener = None
        self._gateway = Gateway(config, limits=LimitClient.from_config(config, tuning=config.limiter),
                                costs=CostTracker.from_config(config), breakers=self._breakers.local,
                                metrics=METRICS, on_shutdown=[self._breakers.close],
                                costs_factory=CostTracker.from_config, drain_first=self._stop_listener)
        self._gateway.replica_header = replica_header(ctx.replica_id.unique_id)
        if listen is not None:
            from serve_apps.gateway_listener import GatewayListener
            args = GatewayListenArgs.model_validate(listen)
            await refuse_a_serve_proxy_on(args.port)
            self._listener = GatewayListener(self._gateway, args)
            self._listener.bind()         # a taken port fails the replica's start, named

    async def _open_listener(self) -> None:
        """Accept on the listener from the first applied config on. The gateway starts first (Serve's
        lifespan startup, later, is then a no-op): a request there never finds providers unopened."""
        if self._listener is not None and not self._listener.opened:
            await self._gateway.startup()
            await self._listener.serve()

    async def _stop_listener(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    async def check_health(self) -> None:
        if self._listener is not None:
            await self._open_listener()      # a deployment without user_config opens it here
            self._listener.check()

    async def reconfigure(self, user_config: dict) -> None:
        """Serve calls this after __init__ and whenever the deployment's user_config changes."""
        self._apply_user_config(user_config)
        await self._open_listener()

    def _apply_user_config(self, user_config: dict) -> None:
        cfg = (user_config or {}).get("config")
        if cfg is None:
            return
        try:
            config = parse_config(cfg, source="user_config.config")
            if config == self._gateway.cfg:
                return
            self._gateway.reconfigure(config)     # all or nothing (Gateway.reconfigure)
        except Exception as e:  # noqa: BLE001 - any refusal keeps the old configuration serving
            # Not re-raised: Serve stops and restarts a replica whose reconfigure fails, and the
            # restarted one would fail the same way, taking the gateway down over a typo.
            log.error("gateway user_config change refused, the previous configuration keeps serving: %s",
                      str(e).splitlines()[0] if str(e) else type(e).__name__)

    def __serve_build_asgi_app__(self):
        return self._gateway

    # Handle transport for gateway/client/ (docs/INTERFACES.md, "gateway deployment <-> client
    # handle"): the same ASGI app, driven in-process, so both transports behave identically.
    async def api(self, request: dict) -> dict:
        from gateway.handle_ingress import call_asgi
        return await call_asgi(self._gateway, request)

    async def api_stream(self, request: dict):
        from gateway.handle_ingress import stream_asgi
        async for item in stream_asgi(self._gateway, request):
            yield item


def build_app(cfg: GatewayConfig | dict | str | os.PathLike, *, overrides: dict[str, Any] | None = None,
              listen: GatewayListenArgs | None = None) -> Application:
    """Validate the config here, in the driver (fail before deploy), then bind the deployment."""
    if listen is not None:
        try:
            listener_deployment_problem(listen, overrides or {})
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if isinstance(cfg, (str, os.PathLike)):
        config = load_config(resolve_config_path(str(cfg)))
    else:
        config = parse_config(cfg)
    config = expand_store_urls(config)
    dumped = config.model_dump(mode="json", exclude_none=False)
    options = {**DEFAULT_DEPLOYMENT_OPTIONS, "user_config": {"config": dumped}, **(overrides or {})}
    if listen is not None and listen.max_requests_in_flight is None:
        # the listener's requests bypass Serve's queue bounds: the same bounds, applied by the listener
        queued = max(0, int(options.get("max_queued_requests", -1)))
        listen = listen.model_copy(update={"max_requests_in_flight": int(options["max_ongoing_requests"]) + queued})
    return GatewayIngress.options(**options).bind(dumped, listen.model_dump() if listen is not None else None)


async def refuse_a_serve_proxy_on(port: int) -> None:
    """Serve's HTTP proxy binds with SO_REUSEPORT too: on the same port the kernel would split the
    connections between it and the listener without a word. A running Serve keeps its proxy
    settings across `serve deploy` (a changed proxy_location is ignored), so check the live one."""
    from ray.serve.config import ProxyLocation
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    location = await controller.get_proxy_location.remote()
    http = await controller.get_http_config.remote()
    if location not in (None, ProxyLocation.Disabled) and http.port == port:
        raise RuntimeError(f"gateway listen.port {port} is Serve's HTTP proxy port too (proxy_location "
                           f"{getattr(location, 'value', location)}): give the listener another port, or start "
                           "Serve with proxy_location: Disabled (on a running cluster: `serve shutdown`, "
                           "then deploy again)")


def app(args: dict[str, Any]) -> Application:
    """Application builder for `import_path: serve_apps.gateway:app`."""
    a = GatewayAppArgs.model_validate(args or {})
    return build_app(a.config_path if a.config_path is not None else a.config, overrides=a.deployment,
                     listen=a.listen)
