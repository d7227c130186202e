"""The gateway's OpenAI surface through Serve, driven by the official `openai` SDK."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import orjson
import pytest

from tests.integration.conftest_gateway import (ADMIN_KEY, CLIENT_KEY, LIMITED_KEY, fake_providers,  # noqa: F401
                                                gateway, ray_gateway_session)

pytestmark = pytest.mark.integration

MSG = [{"role": "user", "content": "hi there"}]


def raw_post(gw, path: str, data: bytes, key: str | None = CLIENT_KEY, method: str = "POST",
             ctype: str = "application/json") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(gw.v1 + path, data=data if method == "POST" else None, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None and method == "POST":
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@pytest.mark.parametrize("route, api", [("openai", "openai"), ("anthropic", "anthropic"), ("gemini", "gemini")])
def test_chat_non_streamed(gateway, route, api):
    raw = gateway.client().chat.completions.with_raw_response.create(model=route, messages=MSG, max_tokens=16)
    resp = raw.parse()
    assert resp.choices[0].message.content == f"Hello from fake {api}!"
    assert resp.choices[0].finish_reason == "stop"
    # fake: prompt_tokens = 7 + words, 2 of them cached, 5 output pieces
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 5)
    assert resp.usage.prompt_tokens_details.cached_tokens == 2
    assert raw.headers["x-thawline-target"].startswith(f"{route}/0:")
    assert raw.headers["x-thawline-attempts"] == "1"


@pytest.mark.parametrize("route, api", [("openai", "openai"), ("anthropic", "anthropic"), ("gemini", "gemini")])
def test_chat_streamed_with_usage(gateway, route, api):
    stream = gateway.client().chat.completions.create(model=route, messages=MSG, stream=True,
                                                      stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Hello from fake {api}!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 5 and last.usage.prompt_tokens == 9
    assert len({c.id for c in chunks}) == 1


def test_sse_framing_is_openai_exact(gateway):
    body = orjson.dumps({"model": "openai", "messages": MSG, "stream": True})
    status, headers, raw = raw_post(gateway, "/chat/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    frames = raw.decode().split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    payloads = [json.loads(f[len("data: "):]) for f in frames[:-2]]
    assert all(f.startswith("data: ") for f in frames[:-1])
    # no usage chunk unless asked for (the gateway asked upstream for it and strips it)
    assert all("usage" not in p or p["usage"] is None for p in payloads)
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)


@pytest.mark.parametrize("route", ["openai", "anthropic", "gemini"])
def test_completions(gateway, route):
    c = gateway.client()
    resp = c.completions.create(model=route, prompt="say hi", max_tokens=3)
    assert resp.object == "text_completion" and resp.choices[0].text == "Hello from fake"
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 3
    text = "".join(ch.choices[0].text for ch in c.completions.create(model=route, prompt="say hi", stream=True)
                   if ch.choices)
    assert text.startswith("Hello from fake")


def test_embeddings_and_models(gateway):
    c = gateway.client()
    emb = c.embeddings.create(model="openai", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8 and emb.usage.prompt_tokens == 16
    assert len(c.embeddings.create(model="gemini", input="a").data) == 1
    with pytest.raises(openai.BadRequestError):   # Anthropic has no embeddings API
        c.embeddings.create(model="anthropic", input="a")
    ids = {m.id for m in c.models.list()}
    assert {"openai", "anthropic", "gemini", "fail500"} <= ids
    assert {m.id for m in gateway.client(LIMITED_KEY).models.list()} == {"openai"}


def test_max_tokens_cap_clamps(gateway):
    resp = gateway.client().chat.completions.create(model="capped", messages=MSG, max_tokens=500)
    assert resp.choices[0].message.content == "Hello from" and resp.choices[0].finish_reason == "length"


def _assert_openai_error(raw: bytes, *, code: str | None = None, param: str | None = None):
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


def test_malformed_json_wrong_types_unknown_model_oversize(gateway):
    status, _, raw = raw_post(gateway, "/chat/completions", b'{"model": "openai", "messages": [')
    assert status == 400
    _assert_openai_error(raw, code="invalid_json")
    status, _, raw = raw_post(gateway, "/chat/completions", b"[1, 2]")
    assert status == 400
    c = gateway.client()
    with pytest.raises(openai.BadRequestError) as ei:
        c.chat.completions.create(model="openai", messages=MSG, max_tokens="many")
    assert ei.value.body["param"] == "max_tokens" and ei.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as ei:
        c.chat.completions.create(model="openai", messages="hello")
    assert ei.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError) as ei:
        c.chat.completions.create(model="no-such-model", messages=MSG)
    assert ei.value.body["code"] == "model_not_found" and ei.value.body["param"] == "model"
    big = orjson.dumps({"model": "openai", "messages": [{"role": "user", "content": "x" * 70000}]})
    status, _, raw = raw_post(gateway, "/chat/completions", big)
    assert status == 413
    _assert_openai_error(raw, code="request_too_large")


def test_auth_errors(gateway):
    with pytest.raises(openai.AuthenticationError) as ei:
        gateway.client("wrong-key").chat.completions.create(model="openai", messages=MSG)
    assert ei.value.body["code"] == "invalid_api_key"
    status, _, raw = raw_post(gateway, "/chat/completions", orjson.dumps({"model": "openai", "messages": MSG}),
                              key=None)
    assert status == 401
    _assert_openai_error(raw)
    with pytest.raises(openai.PermissionDeniedError):
        gateway.client(LIMITED_KEY).chat.completions.create(model="anthropic", messages=MSG)
    status, _, raw = raw_post(gateway, "/nope", b"{}")
    assert status == 404
    _assert_openai_error(raw)
    status, _, raw = raw_post(gateway, "/chat/completions", None, method="GET")
    assert status == 405
    _assert_openai_error(raw)


def test_usage_endpoint_needs_admin_key(gateway):
    status, _, raw = raw_post(gateway, "/usage?group_by=route", None, key=CLIENT_KEY, method="GET")
    assert status == 401
    _assert_openai_error(raw, code="admin_key_required")
    gateway.client().chat.completions.create(model="openai", messages=MSG)
    status, _, raw = raw_post(gateway, "/usage?group_by=route", None, key=ADMIN_KEY, method="GET")
    assert status == 200
    rows = {r["group"]: r for r in json.loads(raw)["data"]}
    assert rows["openai"]["requests"] >= 1 and rows["openai"]["cost_usd"] > 0
    status, _, raw = raw_post(gateway, "/usage?group_by=color", None, key=ADMIN_KEY, method="GET")
    assert status == 400


# Malformed OpenAI shapes (issue 11): the Anthropic/Gemini translations used to crash on them
# (AttributeError/TypeError) and the client got a bare 500.
SHAPES = [
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]"),
    ({"messages": [*MSG, {"role": "assistant", "content": None, "tool_calls": ["x"]}]}, "messages[1].tool_calls[0]"),
    ({"messages": MSG, "tools": [{"type": "function"}]}, "tools[0].function"),
]


@pytest.mark.parametrize("route, api, model, fallback", [("shape-an", "anthropic", "shape-claude", "shape-gpt-an"),
                                                        ("shape-ge", "gemini", "shape-gemini", "shape-gpt-ge")])
def test_malformed_shapes_for_translating_targets_are_400_without_fallback(gateway, route, api, model, fallback):
    st = gateway.fake.state
    before = (st.count(api, model), st.count("openai", fallback))
    for stream in (False, True):
        for extra, param in SHAPES:
            body = {"model": route, "max_tokens": 8, **extra, **({"stream": True} if stream else {})}
            status, headers, raw = raw_post(gateway, "/chat/completions", orjson.dumps(body))
            assert status == 400, raw
            err = _assert_openai_error(raw, param=param)
            assert err["type"] == "invalid_request_error" and param in err["message"]
            assert headers["content-type"].startswith("application/json") and "x-thawline-fallbacks" not in headers
    status, _, raw = raw_post(gateway, "/completions", orjson.dumps({"model": route, "prompt": ["a", "b"]}))
    assert status == 400
    _assert_openai_error(raw, param="prompt")
    with pytest.raises(openai.BadRequestError) as ei:   # the same through the SDK
        gateway.client().chat.completions.create(model=route, messages=[{"role": "user", "content": ["hi"]}])
    assert ei.value.body["param"] == "messages[0].content[0]"
    # nothing went upstream: not to the translating target, not down the chain to its fallback
    assert (st.count(api, model), st.count("openai", fallback)) == before
    # 8 refusals, the breaker opens after 4 failures in a row: none counted, the target still serves
    raw = gateway.client().chat.completions.with_raw_response.create(model=route, messages=MSG)
    assert raw.headers["x-thawline-target"].startswith(f"{route}/0:") and raw.headers["x-thawline-attempts"] == "1"
    assert raw.parse().choices[0].message.content == f"Hello from fake {api}!"


def test_malformed_shapes_pass_through_to_openai_compatible_upstreams(gateway):
    """A pass-through target relays the body as sent and its upstream judges it (a real OpenAI
    answers 400, relayed as 400 `upstream_rejected`; the lenient fake answers); never a 500."""
    for extra, _ in SHAPES:
        body = {"model": "openai", "max_tokens": 8, **extra}
        status, _, raw = raw_post(gateway, "/chat/completions", orjson.dumps(body))
        assert status == 200, raw
        seen = gateway.fake.state.seen_requests("openai", "gpt-fake")[-1]["body"]
        assert seen["messages"] == extra["messages"] and seen.get("tools") == extra.get("tools")


def test_token_id_embeddings_to_gemini_are_400_not_an_upstream_failure(gateway):
    with pytest.raises(openai.BadRequestError) as ei:
        gateway.client().embeddings.create(model="gemini", input=[[1, 2, 3]])
    assert ei.value.body["param"] == "input" and ei.value.body["type"] == "invalid_request_error"
