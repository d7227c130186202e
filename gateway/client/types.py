"""Typed (pydantic) responses of the client handle.

These mirror the OpenAI objects the gateway returns. They are *responses*, not YAML a person
writes, so unknown fields are kept (`extra="allow"`): a newer gateway or provider adding a field
must not break an older client. Each response also carries `meta`: the gateway's response
headers (the `x-thawline-*` outcome: target, attempts, fallbacks, replica; the `x-ratelimit-*`
state) and client-side timings.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from gateway.response_headers import thawline_headers


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")



class LateHeaders(dict):
    """Answer headers that arrived inside the stream (SSE comments, sent when the gateway started
    the stream before a target answered); the stream adds them to its `meta.headers`."""


class ResponseMeta(_Open):
    headers: dict[str, str] = Field(default_factory=dict, description="Response headers, lower-cased.")
    elapsed_s: float | None = Field(None, description="Client-side seconds from send to full response.")
    first_chunk_s: float | None = Field(None, description="Streams: seconds from send to the first chunk.")

    def thawline(self) -> dict[str, str]:
        """The gateway's own `x-thawline-*` headers, prefix stripped: `target`, `attempts`, and
        `fallbacks` / `replica` where the answer carries them (gateway/response_headers.py)."""
        return thawline_headers(self.headers)


class _WithMeta(_Open):
    _meta: ResponseMeta = PrivateAttr(default_factory=ResponseMeta)

    @property
    def meta(self) -> ResponseMeta:
        return self._meta


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatMessage(_Open):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(_Open):
    index: int = 0
    message: ChatMessage = Field(default_factory=ChatMessage)
    finish_reason: str | None = None


class _Envelope(_Open):
    # The OpenAI envelope the four completion objects (chat and text, whole and chunk) share.
    # Each subclass narrows `choices` and sets its own `object`; redefining a field keeps its
    # place, so the field order (and so `model_dump()`) is the same as spelled out in full.
    id: str = ""
    object: str = ""
    created: int = 0
    model: str = ""
    choices: list[Any] = Field(default_factory=list)
    usage: Usage | None = None


class ChatCompletion(_WithMeta, _Envelope):
    object: str = "chat.completion"
    choices: list[ChatChoice] = Field(default_factory=list)

    @property
    def text(self) -> str:
        return (self.choices[0].message.content or "") if self.choices else ""


class ChatDelta(_Open):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(_Open):
    index: int = 0
    delta: ChatDelta = Field(default_factory=ChatDelta)
    finish_reason: str | None = None


class ChatCompletionChunk(_Envelope):
    object: str = "chat.completion.chunk"
    choices: list[ChatChunkChoice] = Field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c.delta.content or "" for c in self.choices)


class CompletionChoice(_Open):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None


class Completion(_WithMeta, _Envelope):
    object: str = "text_completion"
    choices: list[CompletionChoice] = Field(default_factory=list)

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""


class CompletionChunk(_Envelope):
    object: str = "text_completion"
    choices: list[CompletionChoice] = Field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.choices)


class Embedding(_Open):
    index: int = 0
    object: str = "embedding"
    embedding: list[float] = Field(default_factory=list)


class EmbeddingResponse(_WithMeta):
    object: str = "list"
    model: str = ""
    data: list[Embedding] = Field(default_factory=list)
    usage: Usage | None = None

    @property
    def vectors(self) -> list[list[float]]:
        return [d.embedding for d in sorted(self.data, key=lambda d: d.index)]


class UsageReport(_WithMeta):
    """The cost ledger as the gateway's `/v1/usage` returns it: one row per group."""

    object: str = "list"
    group_by: list[str] = Field(default_factory=list)
    data: list[dict[str, Any]] = Field(default_factory=list)
    # ledger files the gateway moved aside as unreadable: their rows are not in `data`
    quarantined: list[str] = Field(default_factory=list)

    @field_validator("group_by", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        # the gateway echoes the query parameter as sent: "route,key"
        return [p for p in v.split(",") if p] if isinstance(v, str) else v

    @property
    def total_usd(self) -> float:
        return float(sum(float(r.get("cost_usd") or 0.0) for r in self.data))


class ModelInfo(_Open):
    id: str
    object: str = "model"
    owned_by: str | None = None


class ModelList(_WithMeta):
    object: str = "list"
    data: list[ModelInfo] = Field(default_factory=list)


def with_meta(model: _WithMeta, meta: ResponseMeta) -> Any:
    model._meta = meta
    return model
