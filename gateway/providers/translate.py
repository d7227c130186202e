"""Shared OpenAI-shape helpers for translating providers (pure functions).

Providers that only speak a chat API (Anthropic, Gemini) serve /v1/completions by wrapping the
prompt as one user message and unwrapping the answer as `text_completion`.

A request shape a translation cannot map raises `InvalidRequest` (a 400 naming the field), never
a stray AttributeError/TypeError that would surface as a bare 500.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from gateway.errors import BadRequest
from gateway.providers.base import Usage


class InvalidRequest(BadRequest):
    """The client's request has a shape this translation cannot map, e.g. `content: ["hi"]`.

    Deliberately a GatewayError and not a ValueError: the dispatcher turns ValueErrors into a
    param-less BadRequest, while a GatewayError passes through it untouched, so this ends the
    chain walk at once as the client's 400 with `param` set. No fallback (every target would
    refuse the same body) and no breaker sample (nothing was sent upstream).
    """


def invalid(param: str, msg: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {msg}", param=param,
                          code="invalid_type" if msg.startswith("must be") else "invalid_value")


def _check_part(p: Any, param: str) -> None:
    if not isinstance(p, dict) or not isinstance(p.get("type"), str):
        raise invalid(param, 'must be a content part object such as {"type": "text", "text": "..."}')
    if p["type"] == "text" and not isinstance(p.get("text"), str):
        raise invalid(f"{param}.text", "must be a string")
    if p["type"] == "image_url":
        iu = p.get("image_url")
        if not isinstance(iu, dict) or not isinstance(iu.get("url"), str):
            raise invalid(f"{param}.image_url", "must be an object with a 'url' string")


def _check_function(fn: Any, param: str) -> None:
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise invalid(param, "must be an object with a non-empty 'name' string")


def check_chat_shapes(body: dict) -> None:
    """The OpenAI chat fields the Anthropic/Gemini translations read, type-checked up front.

    gateway/validate.py only checks what every target needs (messages are objects with a known
    role and str/list/null content) and leaves the rest to the upstream; a pass-through upstream
    answers a bad shape with its own 400, but a translation would crash on it instead.
    """
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        raise invalid("messages", "must be an array")
    for i, m in enumerate(msgs):
        _check_message(m, i)
    tools = body.get("tools")
    if tools is not None:
        _check_tools(tools)
    tc = body.get("tool_choice")
    if tc is not None:
        _check_tool_choice(tc, tools)
    rf = body.get("response_format")
    if rf is not None:
        _check_response_format(rf)


def _check_message(m: Any, i: int) -> None:
    if not isinstance(m, dict):
        raise invalid(f"messages[{i}]", "must be an object")
    c = m.get("content")
    if isinstance(c, list):
        for j, p in enumerate(c):
            _check_part(p, f"messages[{i}].content[{j}]")
    elif c is not None and not isinstance(c, str):
        raise invalid(f"messages[{i}].content", "must be a string or an array of content parts")
    tcs = m.get("tool_calls")
    if tcs is not None:
        if not isinstance(tcs, list):
            raise invalid(f"messages[{i}].tool_calls", "must be an array")
        for j, tc in enumerate(tcs):
            _check_tool_call(tc, f"messages[{i}].tool_calls[{j}]")
    if m.get("role") == "tool" and not isinstance(m.get("tool_call_id"), str):
        raise invalid(f"messages[{i}].tool_call_id", "must be a string")


def _check_tool_call(tc: Any, param: str) -> None:
    if not isinstance(tc, dict):
        raise invalid(param, "must be an object")
    _check_function(tc.get("function"), f"{param}.function")
    args = tc["function"].get("arguments")
    if args is not None and not isinstance(args, (str, dict)):
        raise invalid(f"{param}.function.arguments", "must be a JSON string")
    if tc.get("id") is not None and not isinstance(tc["id"], str):
        raise invalid(f"{param}.id", "must be a string")


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise invalid("tools", "must be an array")
    for k, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("type"), str):
            raise invalid(f"tools[{k}]", 'must be an object such as {"type": "function", "function": {...}}')
        if t["type"] == "function":
            fn = t.get("function")
            _check_function(fn, f"tools[{k}].function")
            if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
                raise invalid(f"tools[{k}].function.parameters", "must be a JSON Schema object")
            if fn.get("description") is not None and not isinstance(fn["description"], str):
                raise invalid(f"tools[{k}].function.description", "must be a string")


def _check_tool_choice(tc: Any, tools: list | None) -> None:
    if isinstance(tc, str):
        if tc not in ("none", "auto", "required"):
            raise invalid("tool_choice", "must be 'none', 'auto', 'required' or a named function")
    elif not isinstance(tc, dict) or tc.get("type") != "function":
        raise invalid("tool_choice", 'must be a string or {"type": "function", "function": {"name": ...}}')
    else:
        _check_function(tc.get("function"), "tool_choice.function")
        names = {t["function"]["name"] for t in tools or [] if t.get("type") == "function"}
        if tc["function"]["name"] not in names:
            raise invalid("tool_choice.function.name", "must name a function in 'tools'")


def _check_response_format(rf: Any) -> None:
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise invalid("response_format", 'must be an object such as {"type": "json_object"}')
    if rf["type"] == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("name"), str) or not js["name"]:
            raise invalid("response_format.json_schema", "must be an object with a non-empty 'name' string")
        if js.get("schema") is not None and not isinstance(js["schema"], dict):
            raise invalid("response_format.json_schema.schema", "must be a JSON Schema object")


def function_tools(body: dict) -> list[dict]:
    """The request's `tools` entries of type function (other types are refused by `refuses`)."""
    return [t["function"] for t in body.get("tools") or [] if t.get("type") == "function"]


def json_mode(body: dict) -> tuple[str, dict | None] | None:
    """(kind, schema) of the request's JSON mode: ("json_object", None), ("json_schema", schema),
    or None when the answer is free text (no response_format, or type text)."""
    rf = body.get("response_format")
    if not rf or rf.get("type") == "text":
        return None
    if rf.get("type") == "json_object":
        return "json_object", None
    return rf.get("type"), (rf.get("json_schema") or {}).get("schema")


def common_refusal(body: dict) -> str | None:
    """Fields neither chat translation can honour: a tool type other than function, a
    response_format type it does not know."""
    if any(t.get("type") != "function" for t in body.get("tools") or []):
        return "tools"
    rf = body.get("response_format")
    if rf and rf.get("type") not in ("text", "json_object", "json_schema"):
        return "response_format"
    return None


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
            raise InvalidRequest("this provider serves only a single string prompt on /v1/completions",
                                 param="prompt", code="unsupported_value")
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
