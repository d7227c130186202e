"""The async client: the same API as `Client`, as coroutines; streams are `async for` iterators."""
from __future__ import annotations

import time
from typing import Any, Iterable

from gateway.client.base import C, ClientBase, as_messages, build_body, parse, usage_params
from gateway.client.streams import AsyncStream
from gateway.client.transport import AsyncHandleTransport, AsyncHTTPTransport
from gateway.client.types import (ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk,
                                  EmbeddingResponse, ModelList, ResponseMeta, UsageReport)
from gateway.errors import error_from_response


class AsyncClient(ClientBase):
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
        return parse(ChatCompletion, await self._t.send("POST", "/v1/chat/completions", self._headers(), body))

    async def complete(self, model: str, prompt: str, *, stream: bool = False,
                       max_tokens: int | None = None, temperature: float | None = None,
                       **extra: Any) -> Completion | AsyncStream[CompletionChunk]:
        body = build_body(model, stream, {"prompt": prompt, "max_tokens": max_tokens,
                                          "temperature": temperature}, extra)
        if stream:
            return await self._stream("/v1/completions", body, CompletionChunk)
        return parse(Completion, await self._t.send("POST", "/v1/completions", self._headers(), body))

    async def embed(self, model: str, input: str | list[str], **extra: Any) -> EmbeddingResponse:
        body = build_body(model, False, {"input": input}, extra)
        return parse(EmbeddingResponse, await self._t.send("POST", "/v1/embeddings", self._headers(), body))

    async def models(self) -> ModelList:
        return parse(ModelList, await self._t.send("GET", "/v1/models", self._headers(), None))

    async def usage(self, *, group_by: str | None = None, since: str | float | None = None,
                    admin_key: str | None = None) -> UsageReport:
        raw = await self._t.send("GET", "/v1/usage", self._headers(self._admin_key(admin_key)), None,
                                 usage_params(group_by, since))
        return parse(UsageReport, raw)

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
