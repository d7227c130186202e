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
        # only string texts count: a malformed part ({"text": 5}) is the validator's to refuse
        # with a 400, never a crash here
        return " ".join(t for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
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
    # Both fields may be present (an upstream honours one or the other): count the larger.
    given = [v for v in (body.get("max_completion_tokens"), body.get("max_tokens"))
             if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    mt = max(given) if given else (max_tokens_cap or DEFAULT_MAX_TOKENS)
    if max_tokens_cap:
        mt = min(mt, max_tokens_cap)
    n = body.get("n")
    return prompt + mt * (n if isinstance(n, int) and n > 0 else 1)


def _count(v: Any) -> int | None:
    """A token count as an upstream should send it: a non-negative integer (8.0 passes)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 0 else None
    if isinstance(v, float) and v.is_integer() and 0 <= v < 2**53:
        return int(v)
    return None


def usage_from_openai(usage: Any) -> tuple[int, int, int] | None:
    """(tokens_in, tokens_out, tokens_cached) from an OpenAI `usage` object; None if absent OR
    not believable (negative or non-numeric counts, missing fields, not an object): the caller
    then counts the tokens itself, so an odd `usage` never fails a good answer nor bills a
    made-up number. `completion_tokens` may be missing when `total_tokens` gives it (embeddings
    report only prompt and total)."""
    if not usage or not isinstance(usage, dict):
        return None
    tin = _count(usage.get("prompt_tokens"))
    if tin is None:
        return None
    if "completion_tokens" in usage:
        tout = _count(usage.get("completion_tokens"))
    else:
        total = _count(usage.get("total_tokens"))
        tout = total - tin if total is not None and total >= tin else None
    if tout is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return tin, tout, min(cached or 0, tin)
