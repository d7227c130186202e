"""Streamed answers as iterators of typed chunks (`Stream` blocking, `AsyncStream` async).

The transports end a stream with one `{"error": {...}}` payload when it failed, also when it
stopped without `[DONE]` (gateway/sse.py, `PayloadReader`); the stream raises it as
`StreamError`, so a broken stream never looks finished.
"""
from __future__ import annotations

import time
from typing import Any, AsyncIterator, Generic, Iterator

from gateway.client.base import C
from gateway.client.types import LateHeaders, ResponseMeta, Usage
from gateway.errors import error_from_stream_event


def _is_error(item: Any) -> bool:
    return isinstance(item, dict) and "error" in item


class _StreamBase(Generic[C]):
    # What Stream and AsyncStream share: turning one payload into a typed chunk. Fetching the
    # next payload and closing on an error event are sync in one and awaited in the other.
    # (Each subclass keeps its own __init__ only to name its kind of iterator.)
    def __init__(self, items: Any, chunk_cls: type[C], meta: ResponseMeta, t0: float):
        self._items = items
        self._cls = chunk_cls
        self.meta = meta
        self._t0 = t0
        self.usage: Usage | None = None

    def _chunk(self, item: Any) -> C:
        if self.meta.first_chunk_s is None:
            self.meta.first_chunk_s = time.perf_counter() - self._t0
        chunk = self._cls.model_validate(item)
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        return chunk


class Stream(_StreamBase[C]):
    """Iterator of typed chunks. After it is exhausted, `usage` holds the final usage (if sent)
    and `meta` the response headers and time to first chunk. Close it (or use `with`) to stop early."""

    def __init__(self, items: Iterator[Any], chunk_cls: type[C], meta: ResponseMeta, t0: float):
        super().__init__(items, chunk_cls, meta, t0)

    def __iter__(self) -> Iterator[C]:
        return self

    def __next__(self) -> C:
        item = next(self._items)
        while isinstance(item, LateHeaders):
            self.meta.headers.update(item)
            item = next(self._items)
        if _is_error(item):
            self.close()
            raise error_from_stream_event(item)
        return self._chunk(item)

    def text(self) -> str:
        """Drain the stream and return the concatenated text."""
        return "".join(c.text for c in self)  # type: ignore[attr-defined]

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        if close:
            close()

    def __enter__(self) -> "Stream[C]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncStream(_StreamBase[C]):
    def __init__(self, items: AsyncIterator[Any], chunk_cls: type[C], meta: ResponseMeta, t0: float):
        super().__init__(items, chunk_cls, meta, t0)

    def __aiter__(self) -> "AsyncStream[C]":
        return self

    async def __anext__(self) -> C:
        item = await self._items.__anext__()
        while isinstance(item, LateHeaders):
            self.meta.headers.update(item)
            item = await self._items.__anext__()
        if _is_error(item):
            await self.aclose()
            raise error_from_stream_event(item)
        return self._chunk(item)

    async def text(self) -> str:
        return "".join([c.text async for c in self])  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        close = getattr(self._items, "aclose", None)
        if close:
            await close()

    async def __aenter__(self) -> "AsyncStream[C]":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
