"""Shared OpenAI-shape helpers for translating providers (pure functions).

Providers that only speak a chat API (Anthropic, Gemini) serve /v1/completions by wrapping the
prompt as one user message and unwrapping the answer as `text_completion`.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from gateway.providers.base import Usage


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def content_text(content: Any) -> str:
    """OpenAI message content (str or list of parts) as plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def chat_body_from_completion(body: dict) -> dict:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        # a batch of prompts has no chat equivalent; a list of one string is common in SDKs
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise ValueError("this provider serves only a single string prompt on /v1/completions")
        prompt = prompt[0]
    chat = {k: v for k, v in body.items() if k not in ("prompt", "echo", "suffix", "best_of", "logprobs")}
    chat["messages"] = [{"role": "user", "content": prompt}]
    return chat


def completion_from_chat(resp: dict) -> dict:
    choices = [{"index": c.get("index", 0), "text": (c.get("message") or {}).get("content") or "",
                "logprobs": None, "finish_reason": c.get("finish_reason")} for c in resp.get("choices", [])]
    out = {"id": resp.get("id", new_id("cmpl")), "object": "text_completion",
           "created": resp.get("created", int(time.time())), "model": resp.get("model"), "choices": choices}
    if resp.get("usage") is not None:
        out["usage"] = resp["usage"]
    return out


def completion_chunk_from_chat(chunk: dict) -> dict:
    choices = [{"index": c.get("index", 0), "text": (c.get("delta") or {}).get("content") or "",
                "logprobs": None, "finish_reason": c.get("finish_reason")} for c in chunk.get("choices", [])]
    out = {"id": chunk.get("id"), "object": "text_completion", "created": chunk.get("created"),
           "model": chunk.get("model"), "choices": choices}
    if chunk.get("usage") is not None:
        out["usage"] = chunk["usage"]
    return out


def chat_response(*, id: str, model: str, text: str, finish_reason: str | None, usage: Usage | None,
                  tool_calls: list | None = None, created: int | None = None) -> dict:
    msg: dict[str, Any] = {"role": "assistant", "content": text if (text or not tool_calls) else None}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    out = {"id": id, "object": "chat.completion", "created": created or int(time.time()), "model": model,
           "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish_reason}]}
    if usage is not None:
        out["usage"] = usage.to_openai()
    return out


def chat_chunk(*, id: str, model: str, created: int, delta: dict | None = None,
               finish_reason: str | None = None, usage: Usage | None = None) -> dict:
    out: dict[str, Any] = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model}
    if usage is not None and delta is None and finish_reason is None:
        out["choices"] = []
        out["usage"] = usage.to_openai()
        return out
    out["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    return out


def stop_list(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)
