"""ASGI plumbing of the gateway app: JSON and error responses, the size-capped body read and the
SSE sink a streamed answer is written through. No request logic here."""
from __future__ import annotations

from gateway import sse
from gateway.errors import GatewayError, PayloadTooLarge
from gateway.response_headers import answer_headers

JSON_HDR = (b"content-type", b"application/json")
SSE_HDRS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no")]


class ClientGone(Exception):
    """The client hung up (before its body arrived, or while its stream was being written)."""


def hdr_list(d: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in d.items()]


async def send_json(send, status: int, payload: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [JSON_HDR, (b"content-length", str(len(payload)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def with_header(send, header: tuple[bytes, bytes]):
    """`send` that adds `header` to the response start (the replica's id on answers that do not
    assemble their headers with gateway/response_headers.py: admin, UI, unknown paths)."""
    async def wrapped(msg) -> None:
        if msg["type"] == "http.response.start":
            msg = {**msg, "headers": [*msg.get("headers", ()), header]}
        await send(msg)
    return wrapped


async def send_error(send, e: GatewayError, replica: tuple[bytes, bytes] | None = None) -> None:
    extra = hdr_list(e.headers)
    if replica is not None:
        extra.append(replica)
    await send_json(send, e.status, e.to_json(), extra)


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
            raise ClientGone()
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_body:
                raise PayloadTooLarge(f"request body exceeds the limit of {max_body} bytes")
            chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


def request_headers(scope) -> dict[bytes, bytes]:
    """The request headers the gateway reads (authorization, content-length)."""
    return {k: v for k, v in scope["headers"] if k in (b"authorization", b"content-length")}


def auth_header(headers: dict[bytes, bytes]) -> str | None:
    v = headers.get(b"authorization")
    return v.decode("latin-1") if v is not None else None


class SSESink:
    """StreamSink (gateway/dispatch.py) over ASGI `send`: headers go out with the first real token.
    `rate`: the limiter's x-ratelimit-* headers; `replica`: the x-thawline-replica header."""

    __slots__ = ("_send", "rate", "replica", "started")

    def __init__(self, send, rate: dict[str, str] | None, replica: tuple[bytes, bytes] | None):
        self._send, self.rate, self.replica, self.started = send, rate, replica, False

    async def start(self, target, attempts: int, failures: list[str] | None = None) -> None:
        self.started = True
        headers = answer_headers([*SSE_HDRS], self.rate, target, attempts, failures, self.replica)
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def send(self, chunk: dict) -> None:
        try:
            await self._send({"type": "http.response.body", "body": sse.encode(chunk), "more_body": True})
        except OSError:
            # the client hung up (uvicorn raises ClientDisconnected, an OSError): stop the
            # upstream stream too; what was produced is still billed
            raise ClientGone() from None
