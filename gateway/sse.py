"""Server-sent events, shaped exactly like OpenAI's streams.

OpenAI sends `data: <json>\\n\\n` per chunk and ends with `data: [DONE]\\n\\n`; no `event:` lines,
no ids. Upstream streams (OpenAI, Anthropic `event: ...` frames, Gemini `alt=sse`) are parsed by
`SSEParser`, which is incremental because TCP reads split frames anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

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

    __slots__ = ("_buf", "_event", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []

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
