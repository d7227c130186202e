"""Deeply nested JSON in a request (500 levels in tools[].function.parameters) is a 400 in the
OpenAI error shape, asked through the official openai SDK; and each translator that walks or
encodes the schema refuses such a value by name instead of overflowing. No Ray, no network."""
from __future__ import annotations

import asyncio
import hashlib

import httpx
import openai
import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.errors import BadRequest
from gateway.providers.gemini_schema import Unexpressible, to_gemini_schema
from gateway.validate import MAX_DEPTH, check_chat

KEY = "client-key"


def deep_schema(levels: int) -> dict:
    """An object schema whose JSON nests `levels` arrays/objects deep (two per schema level)."""
    s: dict = {"type": "string"}
    for _ in range(levels // 2):
        s = {"type": "object", "properties": {"x": s}}
    return s


def tools(levels: int) -> list[dict]:
    return [{"type": "function", "function": {"name": "f", "parameters": deep_schema(levels)}}]


@pytest.mark.parametrize("route", ["oa", "gm"])
def test_500_levels_of_tool_parameters_answer_400(route):
    cfg = {"providers": {"oa": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9"},
                         "gm": {"type": "gemini", "base_url": "http://127.0.0.1:9"}},
           "routes": {"oa": {"targets": [{"provider": "oa", "model": "m"}]},
                      "gm": {"targets": [{"provider": "gm", "model": "m"}]}},
           "keys": [{"id": "c", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}

    async def main():
        g = Gateway(parse_config(cfg), limits=None, costs=None)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=g), base_url="http://g/v1")
        client = openai.AsyncOpenAI(api_key=KEY, base_url="http://g/v1", http_client=http, max_retries=0)
        try:
            with pytest.raises(openai.BadRequestError) as ei:
                await client.chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}],
                                                     tools=tools(500))
            err = ei.value.body
            assert ei.value.status_code == 400 and err["type"] == "invalid_request_error"
            assert err["param"] == "tools[0].function.parameters" and "nested" in err["message"]
        finally:
            await g.shutdown()
    asyncio.run(main())


def test_depth_bound_lets_real_schemas_through():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools(MAX_DEPTH - 8)}
    check_chat(body)
    with pytest.raises(BadRequest):
        check_chat({**body, "messages": [{"role": "user", "content": [[[[["x"]]]]] * 1}],
                    "metadata": deep_schema(MAX_DEPTH * 2)})


def test_gemini_schema_translation_refuses_deep_schemas_by_name():
    with pytest.raises(Unexpressible) as ei:
        to_gemini_schema(deep_schema(1000))        # 500 schema levels: past Python's recursion limit
    assert "nested deeper" in str(ei.value)
    assert to_gemini_schema(deep_schema(20))["type"] == "OBJECT"


def test_http_provider_refuses_a_payload_it_cannot_encode():
    from gateway.providers import build_provider
    cfg = parse_config({"providers": {"oa": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9"}},
                        "routes": {"r": {"targets": [{"provider": "oa", "model": "m"}]}}})
    prov = build_provider("oa", cfg.providers["oa"])

    async def main():
        with pytest.raises(BadRequest):
            # past orjson's 255-level limit: refused before anything is sent
            await prov.post("http://127.0.0.1:9/x", {"tools": tools(300)}, None, stream=False)
    asyncio.run(main())
