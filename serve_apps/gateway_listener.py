"""The gateway replica's own HTTP listener: `args.listen` of the gateway app.

Why it exists: per request, Serve's replica request path (its HTTP server, request wrapper,
request metrics and context) costs more CPU than the gateway's whole pipeline (bench/RESULTS.md,
"Gateway-owned listener"). With `listen` set, each gateway replica also serves the same ASGI app
(gateway/app.py) from a uvicorn server on its own event loop, with nothing of Serve's in between.

Shape: every gateway replica on a node binds the same host:port with SO_REUSEPORT, and the kernel
spreads new connections over them; a load balancer in front targets that port on the node.

Lifecycle (serve_apps/gateway.py): `bind()` in the replica's constructor (a taken port fails the
start, named); `serve()` once the replica has applied its live config (its first `reconfigure`), so
a new replica never answers with the deploy-time keys and routes; `check()` in Serve's health
check; `stop()` first in the gateway's shutdown, before leases, ledger and providers close.

Not seen by Serve: these requests are not Serve requests. Serve's request-count autoscaler cannot
see them (the app builder refuses `listen` with autoscaling) and Serve's drain does not wait for
them (the listener drains itself within `graceful_s`, which the builder checks against the
deployment's graceful_shutdown_timeout_s). `max_requests_in_flight` bounds them instead of Serve's
max_ongoing_requests / max_queued_requests: past it, a 503 in the OpenAI error shape.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

from gateway.asgi import send_error
from gateway.errors import Unavailable

log = logging.getLogger("thawline.gateway")
START_TIMEOUT_S = 10.0


class GatewayListenArgs(BaseModel):
    """`args.listen` of the gateway app: the port every gateway replica serves on itself."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(..., ge=1, le=65535, description="TCP port; every gateway replica on a node binds it "
                      "(SO_REUSEPORT). A replica refuses to start while Serve's HTTP proxy is on the same "
                      "port (the two would silently split the connections).")
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 for a load balancer on another host.")
    keep_alive_s: int = Field(75, ge=1, description="Idle keep-alive before the listener closes a connection. "
                              "Behind a load balancer keep it above the balancer's idle timeout, so the "
                              "balancer, not the gateway, closes idle connections (no 502 on a reused one).")
    graceful_s: float = Field(10.0, gt=0, description="On replica stop, how long in-flight requests may finish "
                              "before they are cut. The builder checks that it leaves the ledger flush room "
                              "inside the deployment's graceful_shutdown_timeout_s.")
    backlog: int = Field(2048, ge=1, description="Listen backlog of each replica's socket.")
    max_requests_in_flight: int | None = Field(None, ge=1, description="Requests in flight per replica before "
                                               "new ones get a 503 (OpenAI error shape, Retry-After: 1). Default: "
                                               "the deployment's max_ongoing_requests + max_queued_requests.")


def bind_shared(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket that other replicas on this node may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"gateway listener cannot bind {host}:{port}: {e.strerror} (a process "
                      "holds the port without SO_REUSEPORT)") from e
    sock.setblocking(False)
    return sock


def _server_class():
    import uvicorn

    class ReplicaServer(uvicorn.Server):
        """uvicorn without its signal handlers: the replica's process and its signals are Ray's."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return ReplicaServer


class InFlightBound:
    """The ASGI app, refusing HTTP requests past `limit` in flight. Counts requests, not connections:
    a load balancer's idle keep-alive connections must not take the places (uvicorn's own
    limit_concurrency counts them, and answers in plain text)."""

    def __init__(self, app: Any, limit: int | None):
        self.app, self.limit, self.in_flight = app, limit, 0
        self._refusal = Unavailable(f"this gateway replica has {limit} requests in flight, its limit; retry",
                                    code="overloaded", headers={"retry-after": "1"})

    async def __call__(self, scope, receive, send):
        if self.limit is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            return await send_error(send, self._refusal)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class GatewayListener:
    """One replica's listener on the replica's event loop."""

    def __init__(self, app: Any, args: GatewayListenArgs):
        import uvicorn

        self.args = args
        # lifespan off: Serve already runs the app's lifespan (startup at replica start, shutdown at
        # replica stop); no proxy-header rewriting and no access log: the hot path stays the gateway's.
        self._config = uvicorn.Config(InFlightBound(app, args.max_requests_in_flight), http="httptools", ws="none",
                                      lifespan="off", log_config=None, access_log=False, proxy_headers=False,
                                      server_header=False, timeout_keep_alive=args.keep_alive_s,
                                      timeout_graceful_shutdown=math.ceil(args.graceful_s), backlog=args.backlog)
        self._server = _server_class()(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task | None = None

    def bind(self) -> None:
        self._socket = bind_shared(self.args.host, self.args.port, self.args.backlog)

    @property
    def opened(self) -> bool:
        return self._task is not None

    async def serve(self) -> None:
        """Accept from now on; returns once uvicorn serves (raises if it fails to)."""
        if self._socket is None:
            raise RuntimeError("gateway listener: bind() first")
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._socket]),
                                                             name="gateway-listener")
        # A dead server must not keep a socket in the port's group: the kernel would go on
        # steering a share of new connections into a backlog nobody accepts from.
        self._task.add_done_callback(lambda _t: self._close_socket())
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not self._server.started and not self._task.done():
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"gateway listener on {self.args.host}:{self.args.port} did not start "
                                   f"within {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.01)
        self.check()

    def check(self) -> None:
        """Raise when the listener has died (Serve's health check then replaces the replica)."""
        if self._task is not None and self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError(f"gateway listener on {self.args.host}:{self.args.port} stopped"
                               + (f": {exc!r}" if exc else ""))

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by graceful_s), close."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=self.args.graceful_s + 2.0)
            except asyncio.TimeoutError:
                task.cancel()
                log.warning("gateway listener: requests still in flight after %.1f s were cut",
                            self.args.graceful_s)
            except Exception as e:  # noqa: BLE001 - shutdown goes on whatever the server did
                log.warning("gateway listener stopped with %r", e)
        self._close_socket()

    def _close_socket(self) -> None:
        for srv in getattr(self._server, "servers", []):   # the loop's listening servers first:
            srv.close()                                      # they unregister the socket from the loop
        if self._socket is not None:
            self._socket.close()
            self._socket = None
