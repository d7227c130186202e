"""What the fake upstreams (testkit/fake_providers.py) check and build for tools and JSON mode:
the request shapes the real Anthropic Messages and Gemini generateContent APIs accept for tools,
tool_choice/toolConfig, tool results and response schemas, and sample arguments from a schema."""
from __future__ import annotations


def sample(schema: dict | None) -> object:
    """A deterministic value matching a JSON Schema (lowercase types) or Gemini Schema (uppercase)."""
    schema = schema or {}
    if schema.get("enum"):
        return schema["enum"][0]
    t = schema.get("type", "object")
    t = (t[0] if isinstance(t, list) else t).lower()
    if t == "object":
        return {k: sample(v) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return [sample(schema.get("items"))]
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True}.get(t)


def anthropic_shape_error(body: dict) -> str | None:
    """What the real Messages API would refuse in the tools part of `body` (None: fine)."""
    tools = body.get("tools")
    if tools is not None:
        for t in tools:
            if set(t) - {"name", "description", "input_schema", "cache_control"} or \
                    (t.get("input_schema") or {}).get("type") != "object" or not t.get("name"):
                return f"tools: bad tool {t!r}"
    tc = body.get("tool_choice")
    if tc is not None:
        if tc.get("type") not in ("auto", "any", "tool", "none") or (tc["type"] == "tool") != ("name" in tc):
            return f"tool_choice: bad {tc!r}"
        if tools is None:
            return "tool_choice requires tools"
    for m in body.get("messages", []):
        for b in m["content"] if isinstance(m["content"], list) else []:
            if b.get("type") == "tool_use" and (m["role"] != "assistant" or not isinstance(b.get("input"), dict)):
                return "messages: tool_use blocks go in assistant turns with an object input"
            if b.get("type") == "tool_result" and (m["role"] != "user" or "tool_use_id" not in b):
                return "messages: tool_result blocks go in user turns with tool_use_id"
    return None


_GEMINI_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"}
_GEMINI_SCHEMA_KEYS = {"type", "format", "description", "title", "nullable", "enum", "properties", "required",
                       "items", "anyOf", "minItems", "maxItems", "minimum", "maximum", "minLength", "maxLength",
                       "pattern", "minProperties", "maxProperties", "default", "propertyOrdering"}


def gemini_schema_error(s: dict, where: str) -> str | None:
    if set(s) - _GEMINI_SCHEMA_KEYS:
        return f"{where}: unknown fields {sorted(set(s) - _GEMINI_SCHEMA_KEYS)}"
    if "type" in s and s["type"] not in _GEMINI_TYPES:
        return f"{where}.type: {s['type']!r}"
    for k, v in (s.get("properties") or {}).items():
        if (e := gemini_schema_error(v, f"{where}.properties.{k}")):
            return e
    if s.get("items") is not None:
        return gemini_schema_error(s["items"], f"{where}.items")
    return None


def gemini_shape_error(body: dict) -> str | None:
    for i, t in enumerate(body.get("tools") or []):
        if set(t) - {"functionDeclarations", "googleSearch", "codeExecution"}:
            return f"tools[{i}]: unknown fields {sorted(t)}"
        for fd in t.get("functionDeclarations") or []:
            if set(fd) - {"name", "description", "parameters"} or not fd.get("name"):
                return f"functionDeclarations: bad {fd!r}"
            if fd.get("parameters") is not None and (e := gemini_schema_error(fd["parameters"], "parameters")):
                return e
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig")
    if fcc is not None and fcc.get("mode") not in ("AUTO", "ANY", "NONE"):
        return f"functionCallingConfig.mode: {fcc.get('mode')!r}"
    gen = body.get("generationConfig") or {}
    if gen.get("responseSchema") is not None:
        if gen.get("responseMimeType") != "application/json":
            return "responseSchema needs responseMimeType application/json"
        if (e := gemini_schema_error(gen["responseSchema"], "responseSchema")):
            return e
    for c in body.get("contents", []):
        for p in c.get("parts", []):
            if "functionCall" in p and (c["role"] != "model" or not isinstance(p["functionCall"].get("args"), dict)):
                return "functionCall parts go in model turns with object args"
            if "functionResponse" in p and (c["role"] != "user" or not p["functionResponse"].get("name")
                                            or not isinstance(p["functionResponse"].get("response"), dict)):
                return "functionResponse parts go in user turns with a name and an object response"
    return None


def anthropic_tool_use(body: dict) -> dict | None:
    """The tool_use block a request with tools gets (None: a text answer): the forced tool, else
    the first; none once the last turn carries tool results (unless a tool is forced)."""
    tc = body.get("tool_choice") or {"type": "auto"}
    last = (body.get("messages") or [{}])[-1]
    answered = isinstance(last.get("content"), list) and any(b.get("type") == "tool_result" for b in last["content"])
    if not body.get("tools") or tc["type"] == "none" or (answered and tc["type"] != "tool"):
        return None
    tool = next((t for t in body["tools"] if t["name"] == tc.get("name")), body["tools"][0])
    import uuid
    return {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], "name": tool["name"],
            "input": sample(tool["input_schema"])}


def anthropic_tool_frames(ev, mid: str, model: str, usage: dict, tool_use: dict, n_out: int) -> list[bytes]:
    """A streamed tool_use answer: content_block_start tool_use, then input_json_delta pieces."""
    import orjson
    js = orjson.dumps(tool_use["input"]).decode()
    half = len(js) // 2
    deltas = [ev("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": p}})
              for p in ("", js[:half], js[half:])]
    return [ev("message_start", {"message": {"id": mid, "type": "message", "role": "assistant", "model": model,
                                             "content": [], "stop_reason": None, "stop_sequence": None,
                                             "usage": {**usage, "output_tokens": 1}}}),
            ev("content_block_start", {"index": 0, "content_block": {**tool_use, "input": {}}}), *deltas,
            ev("content_block_stop", {"index": 0}),
            ev("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                 "usage": {"output_tokens": n_out}}),
            ev("message_stop", {})]


def gemini_call(body: dict) -> dict | None:
    """The functionCall part a request with functionDeclarations gets (None: a text answer)."""
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {"mode": "AUTO"}
    answered = any("functionResponse" in p for p in (body.get("contents") or [{}])[-1].get("parts", []))
    decls = [fd for t in body.get("tools") or [] for fd in t.get("functionDeclarations") or []]
    if not decls or fcc["mode"] == "NONE" or (answered and fcc["mode"] != "ANY"):
        return None
    allowed = fcc.get("allowedFunctionNames")
    fd = next((d for d in decls if not allowed or d["name"] in allowed), decls[0])
    return {"functionCall": {"name": fd["name"], "args": sample(fd.get("parameters"))}}
