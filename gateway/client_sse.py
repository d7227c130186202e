"""Incremental parser for the gateway's Server-Sent Events streams (pure, no I/O).

Frames are `data: <json>` lines ended by a blank line; `data: [DONE]` ends a clean stream;
an `event: error` frame (or any data object with an `error` key) reports a mid-stream failure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

DONE = object()  # sentinel yielded for `data: [DONE]`


@dataclass
class SSEEvent:
    event: str | None
    data: str


class SSEParser:
    """Feed it text lines (without their newline); it returns the events each line completes."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed_line(self, line: str) -> list[SSEEvent]:
        line = line.rstrip("\r")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return []  # comment / keep-alive
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return []

    def close(self) -> list[SSEEvent]:
        """A stream may end without the final blank line; flush what is pending."""
        return self._dispatch()

    def _dispatch(self) -> list[SSEEvent]:
        if not self._data:
            self._event = None
            return []
        ev = SSEEvent(self._event, "\n".join(self._data))
        self._event, self._data = None, []
        return [ev]


def decode_event(ev: SSEEvent) -> Any:
    """JSON payload of one event, `DONE` for the terminator; an error event becomes a dict with `error`."""
    if ev.data.strip() == "[DONE]":
        return DONE
    try:
        obj = json.loads(ev.data)
    except json.JSONDecodeError:
        return {"error": {"message": f"unparseable stream frame: {ev.data[:100]!r}", "code": "bad_frame"}}
    if ev.event == "error" and not (isinstance(obj, dict) and "error" in obj):
        obj = {"error": {"message": str(obj), "code": None}}
    return obj


class PayloadReader:
    """`SSEParser` + `decode_event` as the client transports read a stream: text lines in,
    payloads out, and nothing more once `data: [DONE]` arrives (`done` tells the read loop
    to stop). One piece for the sync HTTP, async HTTP and ASGI loops, which differ only in
    how they get their lines."""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.done = False

    def feed_line(self, line: str) -> list[Any]:
        return self._decode(self._parser.feed_line(line))

    def close(self) -> list[Any]:
        return self._decode(self._parser.close())

    def _decode(self, events: list[SSEEvent]) -> list[Any]:
        out: list[Any] = []
        if self.done:
            return out
        for ev in events:
            payload = decode_event(ev)
            if payload is DONE:
                self.done = True
                break
            out.append(payload)
        return out


def iter_sse_payloads(lines: Iterable[str]) -> Iterator[Any]:
    parser = SSEParser()
    for line in lines:
        for ev in parser.feed_line(line):
            yield decode_event(ev)
    for ev in parser.close():
        yield decode_event(ev)
