"""The gateway's OpenAPI 3.0 document (served at GET /openapi.json).

Hand-written, not generated from a framework: it describes exactly the subset of OpenAI's API the
gateway validates (gateway/validate.py), plus the error shape every 4xx/5xx uses. Schemathesis
runs against it in tests/integration/test_gateway_schemathesis.py.
"""
from __future__ import annotations

from typing import Any

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": "string", "nullable": True},
        "code": {"type": "string", "nullable": True}}}}}

_ERR_RESPONSES = {str(s): {"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                  for s, d in ((400, "Invalid request"), (401, "Missing or invalid key"), (403, "Key may not use this model"),
                               (404, "Unknown model"), (413, "Body too large"), (429, "Rate limit or budget exceeded"),
                               (502, "Upstream error"), (503, "No target available"))}

_STOP = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}], "nullable": True}
_COMMON = {
    "stream": {"type": "boolean", "nullable": True},
    "stream_options": {"type": "object", "nullable": True, "properties": {"include_usage": {"type": "boolean"}}},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 64, "nullable": True},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": True},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
    "n": {"type": "integer", "minimum": 1, "maximum": 1, "nullable": True},
    "stop": _STOP,
    "user": {"type": "string"},
}
# The portable subset every provider type serves: token-id prompts and prompt batches pass
# through to OpenAI-compatible upstreams but chat-only providers (Anthropic, Gemini) refuse them
# with 400, so the document does not promise them.
_PROMPT = {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}}]}
_INPUT = {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "maxItems": 16, "items": {"type": "string"}}]}


def _model(models: list[str] | None) -> dict:
    return {"type": "string", "enum": sorted(models)} if models else {"type": "string", "minLength": 1}


def openapi_document(models: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """`models`: endpoint ("chat" | "completions" | "embeddings") -> route aliases that serve it."""
    models = models or {}
    chat_req = {"type": "object", "required": ["model", "messages"], "properties": {
        "model": _model(models.get("chat")),
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role", "content"], "properties": {
                "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                "content": {"type": "string"}}}},
        **_COMMON}}
    cmpl_req = {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": _model(models.get("completions")), "prompt": _PROMPT, **_COMMON}}
    emb_req = {"type": "object", "required": ["model", "input"], "properties": {
        "model": _model(models.get("embeddings")), "input": _INPUT, "encoding_format": {"type": "string", "enum": ["float", "base64"]}}}
    obj = {"type": "object"}

    def post(summary: str, schema: dict, stream: bool = True) -> dict:
        content = {"application/json": {"schema": obj}}
        if stream:
            # one SSE event: `data:` holds a JSON chunk or [DONE]; `event: error` ends a broken stream
            content["text/event-stream"] = {"schema": {"type": "object", "required": ["data"], "properties": {
                "data": {"type": "string"}, "event": {"type": "string", "enum": ["message", "error"]}}}}
        return {"post": {"summary": summary, "security": [{"bearer": []}],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                         "responses": {"200": {"description": "OK", "content": content}, **_ERR_RESPONSES}}}

    return {
        "openapi": "3.0.3",
        "info": {"title": "Thawline gateway", "version": "1"},
        "components": {"schemas": {"Error": ERROR},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/chat/completions": post("Chat completion (OpenAI-compatible)", chat_req),
            "/v1/completions": post("Text completion (OpenAI-compatible)", cmpl_req),
            "/v1/embeddings": post("Embeddings (OpenAI-compatible)", emb_req, stream=False),
            "/v1/models": {"get": {"summary": "Route aliases this key may use", "security": [{"bearer": []}],
                                   "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                                       "type": "object", "required": ["object", "data"], "properties": {
                                           "object": {"type": "string"}, "data": {"type": "array"}}}}}},
                                       "401": _ERR_RESPONSES["401"]}}},
        },
    }
