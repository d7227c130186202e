"""The gateway replica's own HTTP listener: `args.listen` of the gateway app.

Why it exists: per request, Serve's replica request path (its HTTP server, request wrapper,
request metrics and context) costs more CPU than the gateway's whole pipeline (bench/RESULTS.md,
"Gateway-owned listener"). With `listen` set, each gateway replica also serves the same ASGI app
(gateway/app.py) from a uvicorn server on its own event loop, with nothing of Serve's in between.

Shape: every gateway replica on a node binds the same host:port with SO_REUSEPORT, and the kernel
spreads new connections over them; a load balancer in front targets that port on the node. Serve's
own HTTP proxy keeps working (or is turned off with `proxy_location: Disabled`), and Python clients
keep the handle transport (gateway/client/).

Not seen by Serve: requests on this listener are not Serve requests, so Serve's request-count
autoscaler cannot see them; the app builder refuses `listen` together with an autoscaling_config
(serve_apps/gateway.py). Shutdown: the listener stops first in the gateway's shutdown (stop
accepting, close idle keep-alives, finish in-flight requests within `graceful_s`), then the
gateway flushes its ledger, so no answered request misses the ledger.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("thawline.gateway")


class GatewayListenArgs(BaseModel):
    """`args.listen` of the gateway app: the port every gateway replica serves on itself."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(..., ge=1, le=65535, description="TCP port; every gateway replica on a node binds it "
                      "(SO_REUSEPORT). Must differ from Serve's http_options.port on nodes running a proxy.")
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 for a load balancer on another host.")
    keep_alive_s: int = Field(75, ge=1, description="Idle keep-alive before the listener closes a connection. "
                              "Behind a load balancer keep it above the balancer's idle timeout, so the "
                              "balancer, not the gateway, closes idle connections (no 502 on a reused one).")
    graceful_s: float = Field(15.0, gt=0, description="On replica shutdown, how long in-flight requests may "
                              "finish before they are cut. Keep it under the deployment's "
                              "graceful_shutdown_timeout_s (20 s by default).")
    backlog: int = Field(2048, ge=1, description="Listen backlog of each replica's socket.")


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
        raise OSError(e.errno, f"gateway listener cannot bind {host}:{port}: {e.strerror} (another process "
                      "holds the port without SO_REUSEPORT, e.g. Serve's HTTP proxy on the same port?)") from e
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


class GatewayListener:
    """One replica's listener: `start()` on the replica's loop, `stop()` in the gateway's shutdown."""

    def __init__(self, app: Any, args: GatewayListenArgs):
        import uvicorn

        self.args = args
        # lifespan off: Serve already runs the app's lifespan (startup at replica start, shutdown at
        # replica stop); no proxy-header rewriting and no access log: the hot path stays the gateway's.
        self._config = uvicorn.Config(app, http="httptools", ws="none", lifespan="off", log_config=None,
                                      access_log=False, proxy_headers=False, server_header=False,
                                      timeout_keep_alive=args.keep_alive_s,
                                      timeout_graceful_shutdown=max(1, int(args.graceful_s)),
                                      backlog=args.backlog)
        self._server = _server_class()(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Bind now (a taken port fails the replica's start with the port named), serve in a task."""
        self._socket = bind_shared(self.args.host, self.args.port, self.args.backlog)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._socket]),
                                                             name="gateway-listener")

    @property
    def serving(self) -> bool:
        return self._task is not None and not self._task.done() and self._server.started

    def check(self) -> None:
        """Raise when the listener has died (Serve's health check restarts the replica)."""
        if self._task is not None and self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError(f"gateway listener on {self.args.host}:{self.args.port} stopped"
                               + (f": {exc!r}" if exc else ""))

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by graceful_s), close."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=self.args.graceful_s + 2.0)
        except Exception:  # noqa: BLE001 - shutdown goes on whatever the server did
            self._task.cancel()
            log.warning("gateway listener did not stop cleanly within %.0f s", self.args.graceful_s + 2.0)
        self._task = None
