"""Client handle: pure parts (error mapping against the gateway's real error rendering, SSE
parsing, request building, typed responses). No Ray, no network."""
from __future__ import annotations

import json

import pytest

from gateway import errors as gw
from gateway.client import (AuthError, BadRequest, BudgetExceeded, ChatCompletion, RateLimited,
                            Unavailable, as_messages, build_body, normalize_base_url, usage_params)
from gateway.client.types import ChatCompletionChunk, ResponseMeta, UsageReport, with_meta
from gateway.errors import StreamError, error_from_response, error_from_stream_event
from gateway.sse import PayloadReader


def _read(raw: bytes, *, split: int | None = None) -> list:
    """What a client transport makes of a gateway stream's bytes (fed in one read, or two)."""
    r = PayloadReader()
    parts = [raw] if split is None else [raw[:split], raw[split:]]
    out = [p for part in parts for p in r.feed(part)]
    return out + r.close()


def _roundtrip(exc: gw.GatewayError):
    """Render exactly as the gateway does over HTTP, then map as the client does."""
    status, headers, body = gw.render(exc)
    return error_from_response(status, headers, json.loads(body))


@pytest.mark.parametrize("gateway_exc, client_cls", [
    (gw.AuthError("bad key"), AuthError),
    (gw.PermissionDenied("route not allowed"), AuthError),
    (gw.BadRequest("max_tokens must be > 0"), BadRequest),
    (gw.NotFound("no such model"), BadRequest),
    (gw.PayloadTooLarge("too big"), BadRequest),
    (gw.BudgetExceeded("daily budget of $1.00 spent"), BudgetExceeded),
    (gw.Unavailable("all targets failed"), Unavailable),
    (gw.UpstreamError("upstream said 500"), Unavailable),
])
def test_every_gateway_error_maps_to_its_typed_exception(gateway_exc, client_cls):
    err = _roundtrip(gateway_exc)
    assert type(err) is client_cls
    assert err.status == gateway_exc.status
    assert err.code == gateway_exc.code
    assert gateway_exc.message in str(err)


def test_rate_limited_carries_retry_after_and_budget_does_not():
    err = _roundtrip(gw.RateLimited("rpm limit", retry_after_s=2.2))
    assert isinstance(err, RateLimited) and not isinstance(err, BudgetExceeded)
    assert err.retry_after == 3.0  # the gateway rounds Retry-After up to whole seconds
    budget = _roundtrip(gw.BudgetExceeded("spent"))
    assert not isinstance(budget, RateLimited)


def test_retry_after_falls_back_to_openai_reset_header():
    err = error_from_response(429, {"x-ratelimit-reset-requests": "250ms"},
                              {"error": {"message": "slow down", "code": "rate_limit_exceeded"}})
    assert isinstance(err, RateLimited) and err.retry_after == pytest.approx(0.25)


def test_non_json_error_bodies_still_map_by_status():
    assert isinstance(error_from_response(502, {}, "<html>bad gateway</html>"), Unavailable)
    err = error_from_response(404, {}, None)
    assert isinstance(err, BadRequest) and "HTTP 404" in str(err)


def test_stream_error_event_is_a_stream_error():
    err = error_from_stream_event({"error": {"message": "upstream broke", "code": "upstream_error"}})
    assert isinstance(err, StreamError) and isinstance(err, Unavailable)
    assert err.code == "upstream_error"


def test_sse_reader_handles_frames_comments_and_stops_at_done():
    text = (': keep-alive\n\n'
            'data: {"id": "1", "choices": [{"delta": {"content": "he"}}]}\n\n'
            'data: {"id": "1",\ndata: "choices": [{"delta": {"content": "llo"}}]}\n\n'
            'data: [DONE]\n\n'
            'data: {"after": "done"}\n\n').encode()
    for split in range(len(text) + 1):
        payloads = _read(text, split=split)
        assert [p["choices"][0]["delta"]["content"] for p in payloads] == ["he", "llo"], split


def test_sse_reader_ends_at_an_error_event():
    frames = gw.Unavailable("died mid-stream").sse_event()
    payloads = _read(b'data: {"id": "1"}\n\n' + frames + b'data: {"id": "2"}\n\ndata: [DONE]\n\n')
    assert payloads[0] == {"id": "1"}
    assert payloads[1]["error"]["message"] == "died mid-stream"
    assert len(payloads) == 2  # nothing after the error
    assert isinstance(error_from_stream_event(payloads[1]), StreamError)


def test_stream_without_done_never_looks_finished():
    """A stream that stops without [DONE] (clean EOF, or cut mid-frame: the half frame is not
    dispatched) ends with an error payload, which the client raises as StreamError."""
    for raw in (b'data: {"a": 1}\n\n', b'data: {"a": 1}\n\ndata: {"b": 2}', b'data: {"a": 1}'):
        payloads = _read(raw)
        assert payloads[:-1] == ([{"a": 1}] if raw.startswith(b'data: {"a": 1}\n\n') else [])
        err = error_from_stream_event(payloads[-1])
        assert isinstance(err, StreamError) and err.code == "stream_truncated"


def test_client_errors_pickle_with_what_they_carry():
    import pickle

    for err in (error_from_response(429, {"retry-after": "2"}, {"error": {"message": "slow", "code": "x"}}),
                error_from_stream_event({"error": {"message": "broke", "code": "upstream_error"}}),
                gw.RateLimited("rpm", retry_after_s=3.0), gw.NotFound("nope", param="model")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert (back.status, back.code, back.type, back.param, back.headers, back.body) == \
            (err.status, err.code, err.type, err.param, err.headers, err.body)
    assert pickle.loads(pickle.dumps(gw.RateLimited("rpm", retry_after_s=3.0))).retry_after == 3.0


def test_request_building():
    assert normalize_base_url("http://h:1/v1/") == "http://h:1"
    assert normalize_base_url("http://h:1") == "http://h:1"
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    body = build_body("tiny", True, {"messages": as_messages("hi"), "max_tokens": 4, "temperature": None},
                      {"seed": 1})
    assert body == {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                    "seed": 1, "stream": True, "stream_options": {"include_usage": True}}
    assert "stream" not in build_body("tiny", False, {"prompt": "x"}, {})
    assert usage_params("route", 1700000000) == {"group_by": "route", "since": "1700000000"}
    assert usage_params(None, None) == {}


def test_typed_responses_keep_unknown_fields_and_meta():
    body = {"id": "c1", "object": "chat.completion", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hey"},
                         "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            "system_fingerprint": "fp"}
    r = with_meta(ChatCompletion.model_validate(body),
                  ResponseMeta(headers={"x-thawline-target": "local", "x-request-id": "r"}))
    assert r.text == "hey" and r.usage.total_tokens == 5
    assert r.model_extra["system_fingerprint"] == "fp"
    assert r.meta.thawline() == {"target": "local"}
    chunk = ChatCompletionChunk.model_validate({"choices": [{"index": 0, "delta": {"content": "a"}},
                                                            {"index": 1, "delta": {}}]})
    assert chunk.text == "a"
    report = UsageReport.model_validate({"object": "list", "group_by": "route",
                                         "data": [{"group": "a", "cost_usd": 0.5}, {"group": "b", "cost_usd": 0.25}]})
    assert report.group_by == ["route"]
    assert report.total_usd == pytest.approx(0.75)


def _mock_client(cls, body: bytes):
    """A client whose HTTP transport answers every request with `body` as an SSE stream."""
    import httpx

    def answer(request):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    c = cls("http://gateway.test/v1", api_key="k")
    http_cls = httpx.Client if cls.__name__ == "Client" else httpx.AsyncClient
    c._t._http = http_cls(base_url="http://gateway.test", transport=httpx.MockTransport(answer))
    return c


_CHUNK = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'


def test_http_stream_without_done_raises_and_with_done_finishes():
    from gateway.client import Client

    with _mock_client(Client, _CHUNK + b"data: [DONE]\n\n") as c:
        assert c.chat("m", "x", stream=True).text() == "hi"
    with _mock_client(Client, _CHUNK) as c:
        stream = c.chat("m", "x", stream=True)
        with pytest.raises(StreamError, match="without \\[DONE\\]"):
            stream.text()


async def test_async_http_stream_without_done_raises():
    from gateway.client import AsyncClient

    async with _mock_client(AsyncClient, _CHUNK + b'data: {"choi') as c:
        stream = await c.chat("m", "x", stream=True)
        with pytest.raises(StreamError):
            await stream.text()
