"""The blocking client: `Client(base_url)` over HTTP, `Client(handle=h)` / `Client.from_app(name)`
through a Serve DeploymentHandle (only inside a Ray cluster)."""
from __future__ import annotations

import time
from typing import Any, Iterable

from gateway.client.base import C, ClientBase, as_messages, build_body, parse, usage_params
from gateway.client.streams import Stream
from gateway.client.transport import HandleTransport, HTTPTransport
from gateway.client.types import (ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk,
                                  EmbeddingResponse, ModelList, ResponseMeta, UsageReport)
from gateway.errors import error_from_response


class Client(ClientBase):
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
        return parse(ChatCompletion, self._t.send("POST", "/v1/chat/completions", self._headers(), body))

    def complete(self, model: str, prompt: str, *, stream: bool = False, max_tokens: int | None = None,
                 temperature: float | None = None, **extra: Any) -> Completion | Stream[CompletionChunk]:
        """OpenAI (legacy) text completion."""
        body = build_body(model, stream, {"prompt": prompt, "max_tokens": max_tokens,
                                          "temperature": temperature}, extra)
        if stream:
            return self._stream("/v1/completions", body, CompletionChunk)
        return parse(Completion, self._t.send("POST", "/v1/completions", self._headers(), body))

    def embed(self, model: str, input: str | list[str], **extra: Any) -> EmbeddingResponse:
        body = build_body(model, False, {"input": input}, extra)
        return parse(EmbeddingResponse, self._t.send("POST", "/v1/embeddings", self._headers(), body))

    def models(self) -> ModelList:
        return parse(ModelList, self._t.send("GET", "/v1/models", self._headers(), None))

    def usage(self, *, group_by: str | None = None, since: str | float | None = None,
              admin_key: str | None = None) -> UsageReport:
        """The cost ledger grouped by `key`, `route`, `model` or `target`, from `since` (ISO time or epoch s).
        Needs the admin key (`THAWLINE_ADMIN_KEY` if not given)."""
        raw = self._t.send("GET", "/v1/usage", self._headers(self._admin_key(admin_key)), None,
                           usage_params(group_by, since))
        return parse(UsageReport, raw)

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
