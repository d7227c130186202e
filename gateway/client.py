"""Thawline's Python client handle: one API inside the cluster (DeploymentHandle) and outside it (HTTP).

    from gateway.client import Client, RateLimited

    c = Client("http://127.0.0.1:8000/v1", api_key="sk-...")      # outside: HTTP
    c = Client.from_app("gateway", api_key="sk-...")               # inside a Ray job/replica: handle
    r = c.chat("tiny", [{"role": "user", "content": "hi"}], max_tokens=8)
    print(r.text, r.usage.total_tokens, r.meta.thawline())
    for chunk in c.chat("tiny", "hi", stream=True):                # streaming iterator
        print(chunk.text, end="")
    report = c.usage(group_by="route", admin_key="...")           # the cost ledger

`AsyncClient` has the same methods as coroutines (`async for` over streams). Failures raise
`RateLimited` (with `retry_after`), `BudgetExceeded`, `Unavailable`, `BadRequest`, `AuthError`,
all subclasses of `ThawlineError`. The official `openai` SDK pointed at the same base URL works
too; this client adds typed errors, the handle transport and the ledger.
"""
from __future__ import annotations

import os
import time
from typing import Any, AsyncIterator, Generic, Iterable, Iterator, Self, TypeVar

from pydantic import BaseModel

from gateway.client_errors import (AuthError, BadRequest, BudgetExceeded, RateLimited, StreamError,
                                   ThawlineError, Unavailable, error_from_response,
                                   error_from_stream_event)
from gateway.client_transport import (AsyncHandleTransport, AsyncHTTPTransport, HandleTransport,
                                      HTTPTransport, RawResponse)
from gateway.client_types import (ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk,
                                  EmbeddingResponse, ModelList, ResponseMeta, Usage, UsageReport,
                                  with_meta)

__all__ = [
    "Client", "AsyncClient", "Stream", "AsyncStream",
    "ThawlineError", "RateLimited", "BudgetExceeded", "Unavailable", "BadRequest", "AuthError",
    "StreamError", "ChatCompletion", "ChatCompletionChunk", "Completion", "CompletionChunk",
    "EmbeddingResponse", "UsageReport", "ModelList", "Usage",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_TIMEOUT_S = 600.0  # a cold start of a large TP model takes minutes; the gateway bounds it anyway

C = TypeVar("C", bound=BaseModel)


# ------------------------------------------------------------------------ pure request building

def normalize_base_url(base_url: str) -> str:
    """Accept the same base URL the openai SDK takes (`.../v1`); paths below carry `/v1` themselves."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def as_messages(messages: str | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]


def build_body(model: str, stream: bool, fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    body.update({k: v for k, v in fields.items() if v is not None})
    body.update(extra)
    if stream:
        body["stream"] = True
        # Ask for the final usage chunk so streamed calls report tokens like non-streamed ones.
        body.setdefault("stream_options", {"include_usage": True})
    return body


def usage_params(group_by: str | None, since: str | float | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if group_by:
        params["group_by"] = group_by
    if since is not None:
        params["since"] = str(since)
    return params


def _check(raw: RawResponse) -> None:
    if raw.status >= 400:
        raise error_from_response(raw.status, raw.headers, raw.body)
    if not isinstance(raw.body, dict):
        raise Unavailable(f"gateway answered {raw.status} with a non-JSON body", status=raw.status,
                          body=raw.body)


def _parse(model_cls: type[C], raw: RawResponse) -> C:
    _check(raw)
    return with_meta(model_cls.model_validate(raw.body), ResponseMeta(headers=raw.headers,
                                                                      elapsed_s=raw.elapsed_s))


# ---------------------------------------------------------------------------------- streams

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


# ---------------------------------------------------------------------------------- clients

class _Base:
    # What Client and AsyncClient share: everything but the calls themselves, which are sync in
    # one and coroutines in the other. Each names its pair of transports.
    _http_transport: type
    _handle_transport: type

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 handle: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.api_key = api_key if api_key is not None else os.environ.get("THAWLINE_API_KEY")
        if handle is not None:
            self._t: Any = self._handle_transport(handle)
        else:
            url = base_url or os.environ.get("THAWLINE_BASE_URL") or DEFAULT_BASE_URL
            self._t = self._http_transport(normalize_base_url(url), timeout_s)

    @classmethod
    def from_app(cls, app_name: str = "gateway", api_key: str | None = None) -> Self:
        from ray import serve  # only the in-cluster path needs Ray

        return cls(api_key=api_key, handle=serve.get_app_handle(app_name))

    @property
    def base_url(self) -> str:
        return self._t.base_url

    def _headers(self, key: str | None = None) -> dict[str, str]:
        key = key if key is not None else self.api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    def _admin_key(self, admin_key: str | None) -> str | None:
        return admin_key if admin_key is not None else os.environ.get("THAWLINE_ADMIN_KEY", self.api_key)


class Client(_Base):
    """Blocking client. `Client(base_url)` speaks HTTP; `Client(handle=h)` / `Client.from_app(name)`
    calls the gateway deployment through Serve (only inside a Ray cluster)."""

    _http_transport = HTTPTransport
    _handle_transport = HandleTransport

    def _stream(self, path: str, body: dict[str, Any], chunk_cls: type[C]) -> Stream[C]:
        t0 = time.perf_counter()
        items = self._t.stream("POST", path, self._headers(), body)
        head = next(items)
        if head.status >= 400:
            raise error_from_response(head.status, head.headers, head.body)
        return Stream(items, chunk_cls, ResponseMeta(headers=head.headers), t0)

    def chat(self, model: str, messages: str | Iterable[dict[str, Any]], *, stream: bool = False,
             max_tokens: int | None = None, temperature: float | None = None,
             **extra: Any) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """OpenAI chat completion. `messages` may be a plain string (one user message)."""
        body = build_body(model, stream, {"messages": as_messages(messages), "max_tokens": max_tokens,
                                          "temperature": temperature}, extra)
        if stream:
            return self._stream("/v1/chat/completions", body, ChatCompletionChunk)
        return _parse(ChatCompletion, self._t.send("POST", "/v1/chat/completions", self._headers(), body))

    def complete(self, model: str, prompt: str, *, stream: bool = False, max_tokens: int | None = None,
                 temperature: float | None = None, **extra: Any) -> Completion | Stream[CompletionChunk]:
        """OpenAI (legacy) text completion."""
        body = build_body(model, stream, {"prompt": prompt, "max_tokens": max_tokens,
                                          "temperature": temperature}, extra)
        if stream:
            return self._stream("/v1/completions", body, CompletionChunk)
        return _parse(Completion, self._t.send("POST", "/v1/completions", self._headers(), body))

    def embed(self, model: str, input: str | list[str], **extra: Any) -> EmbeddingResponse:
        body = build_body(model, False, {"input": input}, extra)
        return _parse(EmbeddingResponse, self._t.send("POST", "/v1/embeddings", self._headers(), body))

    def models(self) -> ModelList:
        return _parse(ModelList, self._t.send("GET", "/v1/models", self._headers(), None))

    def usage(self, *, group_by: str | None = None, since: str | float | None = None,
              admin_key: str | None = None) -> UsageReport:
        """The cost ledger grouped by `key`, `route`, `model` or `target`, from `since` (ISO time or epoch s).
        Needs the admin key (`THAWLINE_ADMIN_KEY` if not given)."""
        raw = self._t.send("GET", "/v1/usage", self._headers(self._admin_key(admin_key)), None,
                           usage_params(group_by, since))
        return _parse(UsageReport, raw)

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_Base):
    """The same API as `Client`, as coroutines; streams are `async for` iterators."""

    _http_transport = AsyncHTTPTransport
    _handle_transport = AsyncHandleTransport

    async def _stream(self, path: str, body: dict[str, Any], chunk_cls: type[C]) -> AsyncStream[C]:
        t0 = time.perf_counter()
        items = self._t.stream("POST", path, self._headers(), body)
        head = await items.__anext__()
        if head.status >= 400:
            await items.aclose()
            raise error_from_response(head.status, head.headers, head.body)
        return AsyncStream(items, chunk_cls, ResponseMeta(headers=head.headers), t0)

    async def chat(self, model: str, messages: str | Iterable[dict[str, Any]], *, stream: bool = False,
                   max_tokens: int | None = None, temperature: float | None = None,
                   **extra: Any) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        body = build_body(model, stream, {"messages": as_messages(messages), "max_tokens": max_tokens,
                                          "temperature": temperature}, extra)
        if stream:
            return await self._stream("/v1/chat/completions", body, ChatCompletionChunk)
        return _parse(ChatCompletion, await self._t.send("POST", "/v1/chat/completions", self._headers(), body))

    async def complete(self, model: str, prompt: str, *, stream: bool = False,
                       max_tokens: int | None = None, temperature: float | None = None,
                       **extra: Any) -> Completion | AsyncStream[CompletionChunk]:
        body = build_body(model, stream, {"prompt": prompt, "max_tokens": max_tokens,
                                          "temperature": temperature}, extra)
        if stream:
            return await self._stream("/v1/completions", body, CompletionChunk)
        return _parse(Completion, await self._t.send("POST", "/v1/completions", self._headers(), body))

    async def embed(self, model: str, input: str | list[str], **extra: Any) -> EmbeddingResponse:
        body = build_body(model, False, {"input": input}, extra)
        return _parse(EmbeddingResponse, await self._t.send("POST", "/v1/embeddings", self._headers(), body))

    async def models(self) -> ModelList:
        return _parse(ModelList, await self._t.send("GET", "/v1/models", self._headers(), None))

    async def usage(self, *, group_by: str | None = None, since: str | float | None = None,
                    admin_key: str | None = None) -> UsageReport:
        raw = await self._t.send("GET", "/v1/usage", self._headers(self._admin_key(admin_key)), None,
                                 usage_params(group_by, since))
        return _parse(UsageReport, raw)

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
