"""Server-sent events, shaped exactly like OpenAI's streams.

OpenAI sends `data: <json>\\n\\n` per chunk and ends with `data: [DONE]\\n\\n`; no `event:` lines,
no ids. Upstream streams (OpenAI, Anthropic `event: ...` frames, Gemini `alt=sse`) are parsed by
`SSEParser`, which is incremental because TCP reads split frames anywhere. The same parser
reads the gateway's own streams back on the client side (`PayloadReader`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.response_headers import header_from_comment

DONE = b"data: [DONE]\n\n"


def encode(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@dataclass(slots=True)
class Event:
    event: str          # "message" unless the frame named one
    data: str           # data lines joined with "\n"


class SSEParser:
    """Feed raw bytes, get complete events. Handles \\n, \\r\\n and \\r line ends, multi-line data,
    comments (`: keep-alive`) and frames split across reads (WHATWG event-stream rules)."""

    __slots__ = ("_buf", "_event", "_data", "headers")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self.headers: dict[str, str] = {}   # x-thawline-* sent as comments (a stream kept alive while cold)

    def feed(self, chunk: bytes) -> list[Event]:
        # Scan with a cursor and cut the buffer once per feed: slicing the rest off after every
        # line would copy a many-line chunk once per line (quadratic).
        buf = self._buf + chunk if self._buf else chunk
        pos, n = 0, len(buf)
        out: list[Event] = []
        while pos < n:
            i = buf.find(b"\n", pos)
            j = buf.find(b"\r", pos, i if i >= 0 else n)
            if i < 0 and j < 0:
                break
            # the earliest line terminator; \r\n counts as one
            if j >= 0:
                if j + 1 == n:
                    break  # a lone \r at the end may be the first half of \r\n: wait for more
                end, nxt = j, j + (2 if buf[j + 1:j + 2] == b"\n" else 1)
            else:
                end, nxt = i, i + 1
            ev = self._line(buf[pos:end].decode("utf-8"))
            pos = nxt
            if ev is not None:
                out.append(ev)
        self._buf = buf[pos:] if pos else buf
        return out

    def _line(self, line: str) -> Event | None:
        if not line:
            if not self._data and not self._event:
                return None
            ev = Event(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return ev
        if line[0] == ":":
            h = header_from_comment(line)
            if h is not None:
                self.headers[h[0]] = h[1]
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None

    def close(self) -> list[Event]:
        """Flush at EOF. A frame without its blank line is NOT dispatched (per spec): a stream cut
        mid-frame must not yield half an event."""
        self._buf = b""
        self._event, self._data = "", []
        return []


# ------------------------------------------------------------ client side: a gateway stream read back

_END = object()  # what `decode_event` returns for `data: [DONE]`


def _failure(message: str, code: str | None) -> dict[str, Any]:
    return GatewayError(message, code=code).to_dict()


def decode_event(ev: Event) -> Any:
    """JSON payload of one event; `_END` for `[DONE]`; an error event becomes a dict with `error`,
    as does a frame that is no JSON."""
    if ev.data.strip() == "[DONE]":
        return _END
    try:
        obj = json.loads(ev.data)  # not orjson: a stream from elsewhere may carry NaN or huge ints
    except json.JSONDecodeError:
        return _failure(f"unparseable stream frame: {ev.data[:100]!r}", "bad_frame")
    if ev.event == "error" and not (isinstance(obj, dict) and "error" in obj):
        obj = _failure(str(obj), None)
    return obj


class PayloadReader:
    """A gateway stream as its clients read it (the client's HTTP transports, the handle ingress):
    bytes in, payloads (dicts) out, through `SSEParser`.

    A stream ends one of two ways: `data: [DONE]` (finished) or one `{"error": {...}}` payload
    (failed); nothing comes after either, and `done` tells the read loop to stop. A stream that
    stops any other way (the body ended without `[DONE]`, maybe mid-frame) must never look
    finished: `close()` at EOF then gives one `stream_truncated` error payload."""

    __slots__ = ("_parser", "done")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.done = False

    @property
    def late_headers(self) -> dict[str, str]:
        """Outcome headers that came as SSE comments (the caller takes them and clears this)."""
        return self._parser.headers

    def feed(self, chunk: bytes) -> list[Any]:
        if self.done:
            return []
        try:
            events = self._parser.feed(chunk)
        except UnicodeDecodeError:
            self.done = True
            return [_failure("stream frame is not UTF-8", "bad_frame")]
        out: list[Any] = []
        for ev in events:
            if not ev.data:
                continue  # an `event:` line without data (e.g. a ping) carries no payload
            payload = decode_event(ev)
            if payload is _END:
                self.done = True
                break
            out.append(payload)
            if isinstance(payload, dict) and "error" in payload:
                self.done = True
                break
        return out

    def close(self) -> list[Any]:
        """At EOF: nothing after a proper end, else the truncation error."""
        self._parser.close()
        if self.done:
            return []
        self.done = True
        return [_failure("stream ended without [DONE]: the answer may be incomplete", "stream_truncated")]
