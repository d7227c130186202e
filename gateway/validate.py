"""Request body checks for the OpenAI endpoints: fast hand-written type checks (pure).

A pydantic model per request would cost more than the rest of the hot path; these checks look
only at the fields the gateway relies on and leave the rest to the upstream, and each error names
the offending parameter the way OpenAI does (`param`).
"""
from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest

# Deepest nesting of arrays/objects a body may have. Real requests (tool schemas included) stay far
# below; deeper bodies would overflow the upstream JSON encoder (orjson stops at 255) or the schema
# translators' recursion, which must answer 400, not 500.
MAX_DEPTH = 64

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _bad(param: str, msg: str) -> BadRequest:
    return BadRequest(msg, param=param, code="invalid_type" if "must be" in msg else "invalid_value")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _depth_exceeds(v: Any, limit: int) -> bool:
    """Whether `v` nests arrays/objects more than `limit` deep (iterative: no recursion to overflow)."""
    stack = [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            if d > limit:
                return True
            stack.extend((y, d + 1) for y in (x.values() if isinstance(x, dict) else x))
    return False


def check_depth(body: dict) -> None:
    """400 naming the field (tools[i].function.parameters for a tool) nested beyond MAX_DEPTH."""
    for k, v in body.items():
        if not _depth_exceeds(v, MAX_DEPTH):
            continue
        param = k
        if k == "tools" and isinstance(v, list):
            for i, t in enumerate(v):
                if _depth_exceeds(t, MAX_DEPTH):
                    fn = t.get("function") if isinstance(t, dict) else None
                    deep = isinstance(fn, dict) and _depth_exceeds(fn.get("parameters"), MAX_DEPTH - 2)
                    param = f"tools[{i}].function.parameters" if deep else f"tools[{i}]"
                    break
        raise BadRequest(f"'{param}' is nested more than {MAX_DEPTH} levels deep", param=param,
                         code="invalid_value")


def _check_common(body: dict) -> None:
    check_depth(body)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("model", "'model' must be a non-empty string")
    s = body.get("stream")
    if s is not None and not isinstance(s, bool):
        raise _bad("stream", "'stream' must be a boolean")
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise _bad("stream_options", "'stream_options' must be an object")
        iu = so.get("include_usage")
        if iu is not None and not isinstance(iu, bool):
            raise _bad("stream_options.include_usage", "'stream_options.include_usage' must be a boolean")
    for k in ("max_tokens", "max_completion_tokens", "n"):
        v = body.get(k)
        if v is not None and (not _is_int(v) or v < 1):
            raise _bad(k, f"'{k}' must be an integer >= 1")
    for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        v = body.get(k)
        if v is not None and not _is_num(v):
            raise _bad(k, f"'{k}' must be a number")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
        raise _bad("stop", "'stop' must be a string or a list of strings")


def _token_input(v: Any) -> bool:
    """str | list[str] | list[int] | list[list[int]], non-empty."""
    if isinstance(v, str):
        return True
    if not isinstance(v, list) or not v:
        return False
    if all(isinstance(x, str) for x in v) or all(_is_int(x) for x in v):
        return True
    return all(isinstance(x, list) and x and all(_is_int(y) for y in x) for x in v)


def check_chat(body: dict) -> None:
    _check_common(body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "'messages' must be a non-empty array")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}]", f"'messages[{i}]' must be an object")
        if m.get("role") not in _ROLES:
            raise _bad(f"messages[{i}].role", f"'messages[{i}].role' must be one of {sorted(_ROLES)}")
        c = m.get("content")
        if c is not None and not isinstance(c, (str, list)):
            raise _bad(f"messages[{i}].content", f"'messages[{i}].content' must be a string or an array")


def check_completions(body: dict) -> None:
    _check_common(body)
    if not _token_input(body.get("prompt")):
        raise _bad("prompt", "'prompt' must be a string, an array of strings or an array of token ids")


def check_embeddings(body: dict) -> None:
    check_depth(body)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("model", "'model' must be a non-empty string")
    if not _token_input(body.get("input")):
        raise _bad("input", "'input' must be a string, an array of strings or an array of token ids")
    ef = body.get("encoding_format")
    if ef is not None and ef not in ("float", "base64"):
        raise _bad("encoding_format", "'encoding_format' must be 'float' or 'base64'")


CHECKS = {"chat": check_chat, "completions": check_completions, "embeddings": check_embeddings}
