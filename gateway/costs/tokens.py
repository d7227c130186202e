"""Local token estimates (pure): for tpm pre-charges and for providers that report no usage.

No tokenizer for every upstream model ships with the gateway, so this is a heuristic: about 4
characters per token for English text and code (OpenAI's own rule of thumb), plus a few tokens
of framing per chat message. Rows priced from it are marked `estimated` in the ledger.
"""
from __future__ import annotations

import math
from typing import Any

CHARS_PER_TOKEN = 4.0
PER_MESSAGE_OVERHEAD = 4           # role + separators in chat formats
DEFAULT_MAX_TOKENS = 1024          # pre-charged when a request sets no max_tokens and the route no cap


def count_text_tokens(text: str) -> int:
    return int(math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):          # [{"type": "text", "text": ...}, {"type": "image_url"...}]
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def estimate_prompt_tokens(body: dict, *, endpoint: str) -> int:
    if endpoint == "chat":
        msgs = body.get("messages") or []
        return sum(count_text_tokens(_content_text(m.get("content"))) + PER_MESSAGE_OVERHEAD
                   for m in msgs if isinstance(m, dict))
    inp = body.get("prompt") if endpoint == "completions" else body.get("input")
    if isinstance(inp, str):
        return count_text_tokens(inp)
    if isinstance(inp, list):
        return sum(count_text_tokens(x) if isinstance(x, str) else len(x) if isinstance(x, list) else 1
                   for x in inp)
    return 0


def estimate_request_tokens(body: dict, *, endpoint: str, max_tokens_cap: int | None = None) -> int:
    """Prompt estimate + the most the completion may use: what tpm pre-charges."""
    prompt = estimate_prompt_tokens(body, endpoint=endpoint)
    if endpoint == "embeddings":
        return prompt
    mt = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(mt, int) or mt <= 0:
        mt = max_tokens_cap or DEFAULT_MAX_TOKENS
    if max_tokens_cap:
        mt = min(mt, max_tokens_cap)
    n = body.get("n")
    return prompt + mt * (n if isinstance(n, int) and n > 0 else 1)


def usage_from_openai(usage: dict | None) -> tuple[int, int, int] | None:
    """(tokens_in, tokens_out, tokens_cached) from an OpenAI `usage` object, None if absent."""
    if not usage:
        return None
    tin = int(usage.get("prompt_tokens") or 0)
    tout = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return tin, tout, cached
