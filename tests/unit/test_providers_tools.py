"""Tools, tool_choice, tool results and JSON mode through the Anthropic and Gemini translations
(pure, no Ray), the refusal rules, and a round trip through the official openai SDK against the
loopback fakes (in-process gateway, no Serve)."""
from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import orjson
import pytest

from gateway.providers import anthropic as an
from gateway.providers import gemini as ge
from gateway.providers.gemini_schema import Unexpressible, to_gemini_schema
from gateway.providers.translate import InvalidRequest

WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather at a place",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"},
                                                "unit": {"type": "string", "enum": ["c", "f"]}},
                                                "required": ["city"], "additionalProperties": False}}}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": ["integer", "null"]},
                                           "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name"], "additionalProperties": False}
HISTORY = [{"role": "user", "content": "weather in Oslo?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'}]


def js_format(schema=SCHEMA, name="person"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# ---- Anthropic -----------------------------------------------------------------------------

@pytest.mark.parametrize("choice, want", [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "weather"}}, {"type": "tool", "name": "weather"})])
def test_anthropic_tool_choice(choice, want):
    out = an.to_anthropic({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER],
                           "tool_choice": choice}, "c")
    assert out["tool_choice"] == want
    assert out["tools"] == [{"name": "weather", "description": "Weather at a place",
                             "input_schema": WEATHER["function"]["parameters"]}]


def test_anthropic_parallel_tool_calls_off_and_history():
    out = an.to_anthropic({"messages": HISTORY, "tools": [WEATHER], "parallel_tool_calls": False}, "c")
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "call_1", "name": "weather",
                                              "input": {"city": "Oslo"}}]
    assert out["messages"][2]["content"][0]["tool_use_id"] == "call_1"


def test_anthropic_json_mode_is_a_forced_tool():
    out = an.to_anthropic({"messages": [{"role": "user", "content": "x"}], "response_format": js_format()}, "c")
    assert out["tools"][0]["name"] == "person" and out["tools"][0]["input_schema"] == SCHEMA
    assert out["tool_choice"] == {"type": "tool", "name": "person"}
    out = an.to_anthropic({"messages": [{"role": "user", "content": "x"}],
                           "response_format": {"type": "json_object"}}, "c")
    assert out["tool_choice"] == {"type": "tool", "name": an.JSON_TOOL}
    resp = {"id": "m", "model": "c", "stop_reason": "tool_use", "content": [
        {"type": "text", "text": "Here you go"},
        {"type": "tool_use", "id": "t1", "name": "person", "input": {"name": "Ada"}}]}
    msg = an.from_anthropic(resp, "person")["choices"][0]
    assert json.loads(msg["message"]["content"]) == {"name": "Ada"} and "tool_calls" not in msg["message"]
    assert msg["finish_reason"] == "stop"


def test_anthropic_json_mode_stream():
    tr = an.StreamTranslator("person")
    evs = [{"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 3}}},
           {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t",
                                                                          "name": "person", "input": {}}},
           {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"na'}},
           {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": 'me": 1}'}},
           {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}},
           {"type": "message_stop"}]
    chunks = [c for e in evs for c in tr.feed(e["type"], e)]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert text == '{"name": 1}'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")][-1] == "stop"


def test_anthropic_refusals():
    base = {"messages": [{"role": "user", "content": "x"}]}
    assert an.refuses({**base, "tools": [WEATHER], "response_format": js_format()}) == "response_format"
    assert an.refuses({**base, "tools": [{"type": "custom", "custom": {"name": "x"}}]}) == "tools"
    assert an.refuses({**base, "response_format": {"type": "grammar"}}) == "response_format"
    assert an.refuses({**base, "tools": [WEATHER], "tool_choice": "auto"}) is None
    with pytest.raises(InvalidRequest) as e:
        an.refuses({**base, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert e.value.param == "tool_choice.function.name"


# ---- Gemini --------------------------------------------------------------------------------

def test_gemini_tools_history_and_tool_config():
    out = ge.to_gemini({"messages": HISTORY, "tools": [WEATHER],
                        "tool_choice": {"type": "function", "function": {"name": "weather"}}})
    decl = out["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "weather" and decl["parameters"]["type"] == "OBJECT"
    assert decl["parameters"]["properties"]["unit"] == {"type": "STRING", "enum": ["c", "f"], "format": "enum"}
    assert "additionalProperties" not in decl["parameters"]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}
    assert out["contents"][1] == {"role": "model", "parts": [{"functionCall": {"name": "weather",
                                                                               "args": {"city": "Oslo"}}}]}
    assert out["contents"][2] == {"role": "user", "parts": [{"functionResponse": {
        "name": "weather", "response": {"temp": 3}}}]}
    for choice, mode in (("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")):
        out = ge.to_gemini({"messages": HISTORY[:1], "tools": [WEATHER], "tool_choice": choice})
        assert out["toolConfig"]["functionCallingConfig"] == {"mode": mode}


def test_gemini_json_mode():
    out = ge.to_gemini({"messages": HISTORY[:1], "response_format": js_format()})
    gen = out["generationConfig"]
    assert gen["responseMimeType"] == "application/json"
    assert gen["responseSchema"]["properties"]["age"] == {"type": "INTEGER", "nullable": True}
    out = ge.to_gemini({"messages": HISTORY[:1], "response_format": {"type": "json_object"}})
    assert out["generationConfig"] == {"responseMimeType": "application/json"}


def test_gemini_function_call_response_and_stream():
    resp = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}]}, "finishReason": "STOP"}]}
    c = ge.from_gemini(resp, "g")["choices"][0]
    assert c["finish_reason"] == "tool_calls" and c["message"]["content"] is None
    tc = c["message"]["tool_calls"][0]
    assert tc["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'} and tc["id"].startswith("call")
    tr = ge.StreamTranslator("g")
    chunks = tr.feed(resp)
    deltas = [x["choices"][0] for x in chunks]
    assert deltas[1]["delta"]["tool_calls"][0]["index"] == 0
    assert deltas[1]["delta"]["tool_calls"][0]["function"]["name"] == "weather"
    assert deltas[-1]["finish_reason"] == "tool_calls" and tr.done


def test_gemini_refusals():
    base = {"messages": [{"role": "user", "content": "x"}]}
    bad = {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"type": "string"}}}
    assert ge.refuses({**base, "response_format": js_format(bad)}) == "response_format"
    assert ge.refuses({**base, "tools": [{"type": "function", "function": {"name": "f", "parameters": bad}}]}) == "tools"
    assert ge.refuses({**base, "tools": [WEATHER], "response_format": {"type": "json_object"}}) == "response_format"
    assert ge.refuses({**base, "tools": [WEATHER], "parallel_tool_calls": False}) == "parallel_tool_calls"
    assert ge.refuses({**base, "tools": [WEATHER], "response_format": {"type": "text"}}) is None
    with pytest.raises(InvalidRequest):
        ge.to_gemini({"messages": [{"role": "tool", "tool_call_id": "zz", "content": "1"}]})


@pytest.mark.parametrize("schema, where", [
    ({"oneOf": [{"type": "string"}]}, "/oneOf"), ({"type": "object", "additionalProperties": {"type": "string"}},
                                                   "/additionalProperties"),
    ({"type": ["string", "integer"]}, "/type"), ({"type": "integer", "enum": [1, 2]}, "/enum"),
    ({"type": "object", "properties": {"x": {"allOf": []}}}, "/properties/x/allOf"), (True, "")])
def test_gemini_schema_refuses_what_it_cannot_express(schema, where):
    with pytest.raises(Unexpressible) as e:
        to_gemini_schema(schema)
    assert e.value.pointer == where


def test_gemini_schema_conversion():
    assert to_gemini_schema({"$schema": "x", "type": "array", "items": {"anyOf": [{"type": "string"},
                                                                                {"const": "a"}]},
                             "minItems": 1}) == {
        "type": "ARRAY", "items": {"anyOf": [{"type": "STRING"}, {"enum": ["a"], "format": "enum", "type": "STRING"}]},
        "minItems": 1}


# ---- dispatcher + fakes through the openai SDK (in-process gateway, no Ray) ------------------

@pytest.fixture(scope="module")
def fake():
    from testkit.fake_providers import FakeServer
    from testkit.net import free_port
    srv = FakeServer(free_port()).start()
    yield srv
    srv.stop()


def _gateway(fake):
    from gateway.app import Gateway
    from gateway.config import parse_config

    def t(p, m):
        return {"provider": p, "model": m, "first_token_timeout_s": 5, "timeout_s": 10}
    cfg = parse_config({
        "providers": {"oa": {"type": "openai_compatible", "base_url": fake.openai_url},
                      "an": {"type": "anthropic", "base_url": fake.anthropic_url},
                      "ge": {"type": "gemini", "base_url": fake.gemini_url}},
        "routes": {"to-an": {"targets": [t("oa", "tt-500"), t("an", "claude-tools")]},
                   "to-ge": {"targets": [t("oa", "tg-500"), t("ge", "gemini-tools")]},
                   "ge-an": {"targets": [t("ge", "gemini-skip"), t("an", "claude-json")]},
                   "ge-only": {"targets": [t("ge", "gemini-only")]}},
        "keys": [{"id": "c", "sha256": hashlib.sha256(b"x").hexdigest()}]})
    return Gateway(cfg, limits=None, costs=None)


def _client(gw):
    import openai
    return openai.AsyncOpenAI(base_url="http://gw/v1", api_key="x", max_retries=0,
                              http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=gw)))


async def _closing(coro):
    from gateway.providers.http import close_session
    try:
        await coro
    finally:
        await close_session()   # the replica-wide aiohttp session belongs to this test's loop


@pytest.mark.parametrize("route, api", [("to-an", "anthropic"), ("to-ge", "gemini")])
def test_tools_and_json_survive_fallback_via_sdk(fake, route, api):
    async def main():
        gw = _gateway(fake)
        c = _client(gw)
        tools = [WEATHER]
        r = await c.chat.completions.with_raw_response.create(model=route, messages=HISTORY[:1], tools=tools,
                                                             tool_choice="required")
        assert "=500" in r.headers["x-thawline-fallbacks"]
        msg = r.parse().choices[0]
        assert msg.finish_reason == "tool_calls"
        call = msg.message.tool_calls[0]
        assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "x", "unit": "c"}
        # the tool result goes back and a text answer comes out
        r2 = await c.chat.completions.create(model=route, tools=tools, messages=[
            *HISTORY[:1], msg.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'}])
        assert r2.choices[0].message.content.startswith("Hello from fake")
        # streamed tool call
        stream = await c.chat.completions.create(model=route, messages=HISTORY[:1], tools=tools, stream=True)
        name, args, finish = "", "", None
        async for ch in stream:
            for d in ch.choices:
                for tc in d.delta.tool_calls or []:
                    name += tc.function.name or ""
                    args += tc.function.arguments or ""
                finish = d.finish_reason or finish
        assert name == "weather" and json.loads(args) == {"city": "x", "unit": "c"} and finish == "tool_calls"
        # JSON mode (schema), plain and streamed
        r3 = await c.chat.completions.create(model=route, messages=HISTORY[:1], response_format=js_format())
        assert json.loads(r3.choices[0].message.content) == {"name": "x", "age": 1, "tags": ["x"]}
        stream = await c.chat.completions.create(model=route, messages=HISTORY[:1], response_format=js_format(),
                                                 stream=True)
        text = "".join([d.delta.content or "" async for ch in stream for d in ch.choices])
        assert json.loads(text) == {"name": "x", "age": 1, "tags": ["x"]}
        seen = [q["body"] for q in fake.state.seen_requests(api, "claude-tools" if api == "anthropic"
                                                            else "gemini-tools")]
        if api == "anthropic":
            assert seen[0]["tool_choice"] == {"type": "any"}
            assert seen[-1]["tool_choice"] == {"type": "tool", "name": "person"}
        else:
            assert seen[0]["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
            assert seen[-1]["generationConfig"]["responseMimeType"] == "application/json"
    asyncio.run(_closing(main()))


def test_unhonourable_field_skips_target_or_is_refused_by_name(fake):
    async def main():
        import openai
        gw = _gateway(fake)
        c = _client(gw)
        bad = {"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}}
        r = await c.chat.completions.with_raw_response.create(model="ge-an", messages=HISTORY[:1],
                                                             response_format=js_format(bad))
        assert r.headers["x-thawline-fallbacks"] == "ge-an/0:ge/gemini-skip=unsupported:response_format"
        assert isinstance(json.loads(r.parse().choices[0].message.content), dict)   # Anthropic's forced tool
        with pytest.raises(openai.BadRequestError) as e:
            await c.chat.completions.create(model="ge-only", messages=HISTORY[:1], response_format=js_format(bad))
        assert e.value.body["param"] == "response_format" and e.value.body["code"] == "unsupported_parameter"
        with pytest.raises(openai.BadRequestError) as e:
            await c.chat.completions.create(model="ge-only", messages=HISTORY[:1], tools=[WEATHER], stream=True,
                                            parallel_tool_calls=False)
        assert e.value.body["param"] == "parallel_tool_calls"
        assert fake.state.count("gemini", "gemini-skip") == 0 and fake.state.count("gemini", "gemini-only") == 0
    asyncio.run(_closing(main()))
