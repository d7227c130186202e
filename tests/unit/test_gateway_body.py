"""The gateway's request-body reader (gateway/asgi.py `read_body`): linear in the number of ASGI
messages, and an oversized body is refused (413, OpenAI error shape) as soon as it passes the
limit, without receiving the rest. No timing assertions: copies and receive calls are counted."""
from __future__ import annotations

import json

import pytest

from gateway.asgi import ClientGone, read_body
from gateway.errors import PayloadTooLarge


class Chunk(bytes):
    """A body chunk that counts the bytes copied by `bytes + chunk` concatenations.

    `body += chunk` with body a bytes and chunk this subclass calls `Chunk.__radd__` first
    (a subclass' reflected operator wins), so the reader's concatenation cost is visible."""
    copied = 0

    def __radd__(self, other):
        Chunk.copied += len(other) + len(self)
        return bytes(other) + bytes(self)

    def __add__(self, other):
        Chunk.copied += len(self) + len(other)
        return bytes(self) + bytes(other)


class Receiver:
    def __init__(self, chunks: list[bytes], *, endless: bool = False):
        self.chunks, self.endless, self.calls = chunks, endless, 0

    async def __call__(self) -> dict:
        self.calls += 1
        i = self.calls - 1
        if self.endless:
            return {"type": "http.request", "body": self.chunks[0], "more_body": True}
        return {"type": "http.request", "body": self.chunks[i], "more_body": i + 1 < len(self.chunks)}


async def test_many_small_messages_are_joined_in_linear_copies():
    Chunk.copied = 0
    pieces = [Chunk(f"{i:07d},".encode()) for i in range(4000)]   # 32 kB in 8-byte messages
    rx = Receiver(pieces)
    body = await read_body(rx, max_body=1 << 20)
    assert body == b"".join(bytes(p) for p in pieces) and type(body) is bytes
    assert rx.calls == len(pieces)
    # chunk-by-chunk `body += chunk` copies ~n^2/2 bytes (64 MB here); a join copies n once
    assert Chunk.copied <= 2 * len(body)


async def test_empty_and_single_message_bodies():
    assert await read_body(Receiver([b""]), max_body=10) == b""
    assert await read_body(Receiver([b"", b"{}", b""]), max_body=10) == b"{}"
    assert await read_body(Receiver([b"x" * 10]), max_body=10) == b"x" * 10   # the limit itself is fine


async def test_oversized_body_is_refused_as_soon_as_it_passes_the_limit():
    rx = Receiver([b"0123456789"], endless=True)     # a client that would send forever
    with pytest.raises(PayloadTooLarge) as ei:
        await read_body(rx, max_body=55)
    assert rx.calls == 6                              # 60 bytes > 55: stop there, never drain the rest
    e = ei.value
    assert e.status == 413
    err = json.loads(e.to_json())["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["code"] == "request_too_large"


async def test_declared_oversize_is_refused_before_reading():
    rx = Receiver([b"x"])
    with pytest.raises(PayloadTooLarge):
        await read_body(rx, max_body=10, content_length=b"11")
    assert rx.calls == 0


async def test_disconnect_while_reading():
    async def receive():
        return {"type": "http.disconnect"}
    with pytest.raises(ClientGone):
        await read_body(receive, max_body=10)
