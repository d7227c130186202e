"""The gateway deployment's handle ingress (the server side of the client's handle transport):
run one request through the gateway's ASGI app in-process, with no socket, and answer in the
handle protocol (docs/INTERFACES.md, "gateway deployment <-> client handle").

The gateway deployment exposes it in two lines each:

    async def api(self, request: dict) -> dict:
        return await call_asgi(self._gateway, request)

    async def api_stream(self, request: dict):
        async for item in stream_asgi(self._gateway, request):
            yield item

Because the same ASGI app answers, auth, routing, limits, fallback and the ledger behave
exactly as over HTTP; only the transport differs.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

from gateway.sse import PayloadReader


def _scope(request: dict[str, Any], body: bytes) -> dict[str, Any]:
    parts = urlsplit(request.get("path") or "/")
    headers = [(k.lower().encode(), str(v).encode()) for k, v in (request.get("headers") or {}).items()]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": (request.get("method") or "GET").upper(), "scheme": "http",
        "path": parts.path, "raw_path": parts.path.encode(), "query_string": parts.query.encode(),
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 0), "server": ("serve-handle", 0),
    }


def _body(request: dict[str, Any]) -> bytes:
    body = request.get("body")
    return b"" if body is None else json.dumps(body).encode()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


class _Run:
    """Drives the ASGI app in a task; response messages arrive on a queue."""

    def __init__(self, app: Any, request: dict[str, Any]):
        body = _body(request)
        self.scope = _scope(request, body)
        self._body = body
        self._sent_body = False
        self._disconnect = asyncio.Event()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run(app))

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self._disconnect.wait()  # only after the caller went away
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        await self.queue.put(message)

    async def _run(self, app: Any) -> None:
        try:
            await app(self.scope, self._receive, self._send)
        finally:
            await self.queue.put(None)  # end marker, also after an exception

    async def close(self) -> None:
        self._disconnect.set()
        if not self.task.done():
            self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the app's own error was already answered
            pass


async def call_asgi(app: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One non-streamed request -> {"status", "headers", "body"}."""
    run = _Run(app, request)
    status, headers, chunks = 500, {}, []
    try:
        while (msg := await run.queue.get()) is not None:
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
                headers = {k.decode().lower(): v.decode() for k, v in msg.get("headers", [])}
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
    finally:
        await run.close()
    return {"status": status, "headers": headers, "body": _decode(b"".join(chunks))}


async def stream_asgi(app: Any, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """A streamed request: the SSE payloads as dicts, a failure (also a stream cut before [DONE])
    as one last {"error": {...}} dict; a refusal is one {"status","headers","body"}."""
    run = _Run(app, request)
    try:
        status, headers = 500, {}
        msg = await run.queue.get()
        if msg is not None and msg["type"] == "http.response.start":
            status = int(msg["status"])
            headers = {k.decode().lower(): v.decode() for k, v in msg.get("headers", [])}
        if msg is None or status >= 400 or not headers.get("content-type", "").startswith("text/event-stream"):
            chunks = []
            while msg is not None:
                msg = await run.queue.get()
                if msg is not None and msg["type"] == "http.response.body":
                    chunks.append(msg.get("body", b""))
            yield {"status": status, "headers": headers, "body": _decode(b"".join(chunks))}
            return
        # the SSE payloads; a stream that ends without [DONE] ends with an error payload, as the
        # protocol has a failed stream end, never as if finished (gateway/sse.py, PayloadReader)
        reader = PayloadReader()
        while (msg := await run.queue.get()) is not None:
            if msg["type"] != "http.response.body":
                continue
            for payload in reader.feed(msg.get("body", b"")):
                yield payload
            if reader.done:
                return
        for payload in reader.close():
            yield payload
    finally:
        await run.close()
