"""What every provider offers the dispatcher: OpenAI-shaped responses and chunks, classified failures.

Each provider translates an OpenAI request body into its own wire format and back. Streams are
async generators of OpenAI chunk dicts; the last chunk carries `usage` when the provider reports
it. A stream that ends without the provider's terminal marker raises `ProviderError` with
`Kind.STREAM_BROKEN`, so a cut connection can never pass for a finished answer.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, AsyncIterator

from gateway.fallback import Failure, Kind

_log = logging.getLogger("thawline.gateway")

# `target` below is a gateway.routes.Target, not imported even for type checking: routes imports
# the LLM app protocol (adapters), which imports this module.
Target = Any

CHAT, COMPLETIONS, EMBEDDINGS = "chat", "completions", "embeddings"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0        # ALL prompt tokens, cached included (OpenAI's convention)
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False

    def to_openai(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}

    @classmethod
    def from_openai(cls, u: dict | None) -> "Usage | None":
        """None when absent or not believable (negative, non-numeric, missing counts): the
        gateway then counts the tokens itself, and the answer is still served and billed."""
        if not u:
            return None
        from gateway.costs.tokens import usage_from_openai
        t = usage_from_openai(u)
        if t is None:
            _log.warning("upstream sent an invalid `usage` (%s); counting tokens locally", repr(u)[:200])
            return None
        return cls(*t)

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.cached_tokens + other.cached_tokens, self.estimated or other.estimated)


@dataclass(slots=True)
class Response:
    body: dict[str, Any]          # OpenAI-shaped response object
    usage: Usage | None
    raw: bytes | None = None      # upstream bytes that may be sent unchanged (pass-through)


class ProviderError(Exception):
    def __init__(self, failure: Failure):
        super().__init__(failure.message or failure.kind.value)
        self.failure = failure


# Shapes of common provider secrets; anything like them is cut out of upstream error text we
# relay, on top of the exact configured key value.
_SECRET_RE = re.compile(r"(sk-[A-Za-z0-9_\-*]{6,}|sk-ant-[A-Za-z0-9_\-*]{6,}|AIza[0-9A-Za-z_\-]{10,}|"
                        r"Bearer\s+\S+)")


def scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "[redacted]")
    return _SECRET_RE.sub("[redacted]", text)


class Provider:
    """Base class; one instance per provider entry per gateway replica."""

    endpoints: frozenset[str] = frozenset({CHAT, COMPLETIONS, EMBEDDINGS})
    # whether the provider reports usage on streams when asked (else tokens are counted locally)
    streams_usage: bool = True
    # LoRA adapters it serves as "<route>:<adapter>" (the serve provider's cached board listing)
    adapters: frozenset[str] = frozenset()

    def __init__(self, name: str, cfg) -> None:
        self.name, self.cfg = name, cfg

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def is_cold(self) -> bool:
        """Only local targets can be cold (their Serve app is at zero replicas)."""
        return False

    def supports(self, endpoint: str) -> bool:
        return endpoint in self.endpoints

    def refuses(self, endpoint: str, body: dict) -> str | None:
        """The request field this provider cannot honour for `body` (e.g. "response_format"), or
        None. The dispatcher then skips the target (`unsupported:<field>` in x-thawline-fallbacks)
        instead of sending a request whose meaning the translation would silently drop. May raise
        InvalidRequest for a malformed shape (the client's 400)."""
        return None

    async def call(self, endpoint: str, body: dict, target: "Target") -> Response:
        raise NotImplementedError

    def stream(self, endpoint: str, body: dict, target: "Target") -> AsyncIterator[dict]:
        raise NotImplementedError


def unsupported(provider: str, endpoint: str) -> ProviderError:
    return ProviderError(Failure(Kind.UNSUPPORTED, f"provider {provider!r} does not serve /v1/{endpoint}"))
