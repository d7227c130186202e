"""Client handle: pure parts (error mapping against the gateway's real error rendering, SSE
parsing, request building, typed responses). No Ray, no network."""
from __future__ import annotations

import json

import pytest

from gateway import errors as gw
from gateway.client import (AuthError, BadRequest, BudgetExceeded, ChatCompletion, RateLimited,
                            Unavailable, as_messages, build_body, normalize_base_url, usage_params)
from gateway.client_errors import StreamError, error_from_response, error_from_stream_event
from gateway.client_sse import DONE, iter_sse_payloads
from gateway.client_types import ChatCompletionChunk, ResponseMeta, UsageReport, with_meta


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


def test_sse_parser_handles_frames_comments_done_and_error_events():
    frames = gw.Unavailable("died mid-stream").sse_event().decode()
    text = (': keep-alive\n\n'
            'data: {"id": "1", "choices": [{"delta": {"content": "he"}}]}\n\n'
            'data: {"id": "1",\ndata: "choices": [{"delta": {"content": "llo"}}]}\n\n'
            + frames +
            'data: [DONE]\n\n')
    payloads = list(iter_sse_payloads(text.split("\n")))
    assert [p["choices"][0]["delta"]["content"] for p in payloads[:2]] == ["he", "llo"]
    assert payloads[2]["error"]["message"] == "died mid-stream"
    assert payloads[3] is DONE
    assert len(payloads) == 4


def test_sse_parser_flushes_a_frame_without_trailing_blank_line():
    assert list(iter_sse_payloads(['data: {"a": 1}'])) == [{"a": 1}]


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
