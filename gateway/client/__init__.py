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
all subclasses of `ThawlineError`: the gateway's own error classes (gateway/errors.py), built
from its answer. The official `openai` SDK pointed at the same base URL works too; this client
adds typed errors, the handle transport and the ledger.

Modules: `sync` (Client), `async_` (AsyncClient), `base` (what both share: request building,
answer checking), `streams` (Stream, AsyncStream), `transport` (HTTP and DeploymentHandle),
`types` (the typed responses).
"""
from __future__ import annotations

from gateway.client.async_ import AsyncClient
from gateway.client.base import as_messages, build_body, normalize_base_url, usage_params
from gateway.client.streams import AsyncStream, Stream
from gateway.client.sync import Client
from gateway.client.types import (ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk,
                                  EmbeddingResponse, ModelList, Usage, UsageReport)
from gateway.errors import (AuthError, BadRequest, BudgetExceeded, RateLimited, StreamError, ThawlineError,
                            Unavailable)

__all__ = [
    "Client", "AsyncClient", "Stream", "AsyncStream",
    "ThawlineError", "RateLimited", "BudgetExceeded", "Unavailable", "BadRequest", "AuthError",
    "StreamError", "ChatCompletion", "ChatCompletionChunk", "Completion", "CompletionChunk",
    "EmbeddingResponse", "UsageReport", "ModelList", "Usage",
    "as_messages", "build_body", "normalize_base_url", "usage_params",
]
