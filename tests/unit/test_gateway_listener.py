"""The gateway replica's own listener (serve_apps/gateway_listener.py) on its own, no Ray: a
port shared by two listeners, a held port named, a dead server leaving the port's group at once,
a graceful stop that lets the request in flight finish."""
from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx
import pytest

from serve_apps.gateway_listener import GatewayListener, GatewayListenArgs, bind_shared


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _app(scope, receive, send):
    """Answers after `?s` seconds (0 by default)."""
    delay = float((scope.get("query_string") or b"0").decode() or 0)
    await asyncio.sleep(delay)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _in_flight(lst: GatewayListener, n: int) -> None:
    """Until the listener has `n` requests in its app (the slow one is inside, not on its way)."""
    bound = lst._config.app
    for _ in range(500):
        if bound.in_flight == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{bound.in_flight} requests in flight, not {n}")


async def _serving(**args) -> tuple[GatewayListener, str]:
    """A listener bound and serving on a free loopback port, and its base URL."""
    port = _free_port()
    lst = GatewayListener(_app, GatewayListenArgs(port=port, **args))
    lst.bind()
    await lst.serve()
    return lst, f"http://127.0.0.1:{port}"


def test_a_port_held_without_reuseport_is_named_and_two_listeners_share_one():
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
            bind_shared("127.0.0.1", port, 16)
    finally:
        holder.close()
    with contextlib.closing(bind_shared("127.0.0.1", port, 16)), contextlib.closing(bind_shared("127.0.0.1", port, 16)):
        pass   # two replicas of a node: both bind


def test_serve_answers_then_a_dead_server_is_reported_and_leaves_the_port():
    async def run():
        lst, base = await _serving()
        port = lst.args.port
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"{base}/")).text == "ok"
        lst.check()
        lst._task.cancel()                      # the server dies (what a crash in uvicorn looks like here)
        await asyncio.wait({lst._task})
        with pytest.raises(RuntimeError, match=f"listener on 127.0.0.1:{port} stopped"):
            lst.check()
        with pytest.raises(ConnectionRefusedError):  # its socket left the port at once
            await asyncio.open_connection("127.0.0.1", port)
        await lst.stop()
    asyncio.run(run())


def test_stop_lets_the_request_in_flight_finish_and_refuses_new_ones():
    async def run():
        lst, base = await _serving(graceful_s=5, max_requests_in_flight=10)   # counted, so _in_flight sees it
        port = lst.args.port
        async with httpx.AsyncClient() as c:
            slow = asyncio.create_task(c.get(f"{base}/?0.5"))
            await _in_flight(lst, 1)
            await lst.stop()
            assert (await slow).text == "ok"
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(RuntimeError, match="bind"):
            await lst.serve()          # stopped: its socket is gone
    asyncio.run(run())


def test_past_its_bound_the_listener_answers_503_in_the_openai_shape():
    async def run():
        lst, base = await _serving(max_requests_in_flight=1)
        async with httpx.AsyncClient() as c:
            slow = asyncio.create_task(c.get(f"{base}/?0.5"))
            await _in_flight(lst, 1)
            r = await c.get(f"{base}/")
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "overloaded" and r.json()["error"]["type"] == "server_error"
            assert (await slow).text == "ok"
            assert (await c.get(f"{base}/")).text == "ok"     # the place is free again
        await lst.stop()
    asyncio.run(run())
