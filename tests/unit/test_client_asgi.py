"""The handle-side adapter (gateway/handle_ingress.py) driving the real gateway ASGI app in-process:
answers must be what the HTTP path answers, in the handle protocol, and map to the same typed
client errors. Paths that need no upstream provider, so no network and no Ray."""
from __future__ import annotations

import hashlib

import pytest

from gateway.errors import AuthError, BadRequest, error_from_response
from gateway.handle_ingress import call_asgi, stream_asgi

KEY = "sk-unit-test"


@pytest.fixture
def gateway_app():
    from gateway.app import Gateway
    from gateway.config import parse_config

    cfg = parse_config({
        "providers": {"up": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "routes": {"tiny": {"targets": [{"provider": "up", "model": "m"}]}},
        "keys": [{"id": "k1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
    })
    return Gateway(cfg, limits=None, costs=None)


def _req(method, path, body=None, key=KEY):
    return {"method": method, "path": path, "headers": {"authorization": f"Bearer {key}"} if key else {},
            "body": body}


async def test_call_asgi_answers_like_http(gateway_app):
    ok = await call_asgi(gateway_app, _req("GET", "/healthz"))
    assert ok["status"] == 200 and ok["body"] == {"status": "ok"}
    models = await call_asgi(gateway_app, _req("GET", "/v1/models"))
    assert [m["id"] for m in models["body"]["data"]] == ["tiny"]
    assert models["headers"]["content-type"].startswith("application/json")


async def test_refusals_map_to_typed_errors(gateway_app):
    denied = await call_asgi(gateway_app, _req("GET", "/v1/models", key="sk-wrong"))
    err = error_from_response(denied["status"], denied["headers"], denied["body"])
    assert isinstance(err, AuthError) and err.status == 401
    missing = await call_asgi(gateway_app, _req("POST", "/v1/chat/completions",
                                                {"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
    assert isinstance(error_from_response(missing["status"], missing["headers"], missing["body"]), BadRequest)


async def test_refused_stream_yields_one_head_item(gateway_app):
    items = [i async for i in stream_asgi(gateway_app, _req(
        "POST", "/v1/chat/completions",
        {"model": "nope", "stream": True, "messages": [{"role": "user", "content": "x"}]}))]
    assert len(items) == 1 and items[0]["status"] == 404
    assert items[0]["body"]["error"]["code"] == "model_not_found"


async def test_stream_asgi_splits_sse_across_body_messages():
    """SSE frames split at arbitrary byte boundaries (a multi-byte character included)."""
    payload = ('data: {"choices": [{"delta": {"content": "h\u00e9"}}]}\n\n'
               'data: {"error": {"message": "broke", "code": "upstream_error"}}\n\n'
               'data: [DONE]\n\n').encode()

    async def app(scope, receive, send):
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(0, len(payload), 7):
            await send({"type": "http.response.body", "body": payload[i:i + 7], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    items = [i async for i in stream_asgi(app, _req("POST", "/v1/chat/completions", {"stream": True}))]
    assert items == [{"choices": [{"delta": {"content": "h\u00e9"}}]},
                     {"error": {"message": "broke", "code": "upstream_error"}}]


async def test_stream_asgi_ends_a_stream_without_done_with_an_error():
    """An app whose stream stops before [DONE] (here mid-frame) must not look finished to the
    handle caller: the last item is an error, as for any failed stream."""
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"a": 1}\n\ndata: {"b"', "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    items = [i async for i in stream_asgi(app, _req("POST", "/v1/chat/completions", {"stream": True}))]
    assert items[0] == {"a": 1} and len(items) == 2
    assert items[1]["error"]["code"] == "stream_truncated"
