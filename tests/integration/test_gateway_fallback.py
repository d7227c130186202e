"""Fallback through the deployed gateway: 500, 429 + Retry-After, hangs, streams cut midway,
the circuit breaker, and a chain with nothing left."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import orjson
import pytest

from tests.integration.conftest_gateway import ADMIN_KEY, CLIENT_KEY, fake_providers, gateway, ray_gateway_session  # noqa: F401

pytestmark = pytest.mark.integration

MSG = [{"role": "user", "content": "hi"}]


def sse_raw(gw, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(gw.v1 + "/chat/completions", data=orjson.dumps(body), method="POST",
                                 headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read().decode()


def test_500_retries_then_falls_back(gateway):
    # counts are deltas: other modules share this gateway and its fakes (test_client_gateway too)
    before = gateway.fake.state.count("openai", "r500-500")
    raw = gateway.client().chat.completions.with_raw_response.create(model="retry500", messages=MSG)
    assert raw.parse().choices[0].message.content == "Hello from fake openai!"
    assert raw.headers["x-thawline-target"] == "retry500/1:oa/gpt-fake"
    assert raw.headers["x-thawline-attempts"] == "3"          # first try + 1 retry + fallback
    assert gateway.fake.state.count("openai", "r500-500") - before == 2


def test_429_honours_retry_after_then_falls_back(gateway):
    raw = gateway.client().chat.completions.with_raw_response.create(model="rl429", messages=MSG)
    assert raw.parse().choices[0].message.content == "Hello from fake anthropic!"
    assert raw.headers["x-thawline-attempts"] == "3"
    seen = gateway.fake.state.seen_requests("openai", "r429-429")[-2:]
    assert len(seen) == 2
    # the retry waited for the upstream's Retry-After: 1 (plus jitter), not the 10 ms backoff
    assert seen[1]["ts"] - seen[0]["ts"] >= 0.95


def test_hanging_provider_times_out_to_next(gateway):
    c = gateway.client()
    raw = c.chat.completions.with_raw_response.create(model="hang", messages=MSG)
    assert raw.headers["x-thawline-target"] == "hang/1:ge/gemini-fake"
    text = "".join(ch.choices[0].delta.content or "" for ch in
                   c.chat.completions.create(model="hang", messages=MSG, stream=True) if ch.choices)
    assert text == "Hello from fake gemini!"


def test_stream_cut_midway_continues_on_next_target(gateway):
    chunks = list(gateway.client().chat.completions.create(model="cut", messages=MSG, stream=True,
                                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # the cut upstream sent "Hello from"; the next target got it as context and answered on
    assert text == "Hello from" + "Hello from fake anthropic!"
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    cont = gateway.fake.state.seen_requests("anthropic", "claude-fake")[-1]["body"]
    assert cont["messages"][-1] == {"role": "assistant", "content": "Hello from"}
    # usage covers both attempts: the cut one's output counted locally + the 5 reported
    from gateway.costs.tokens import count_text_tokens
    assert chunks[-1].usage.completion_tokens == count_text_tokens("Hello from") + 5


def test_stream_cut_with_no_fallback_ends_with_error_event(gateway):
    with pytest.raises(openai.APIError) as ei:
        for _ in gateway.client().chat.completions.create(model="cutonly", messages=MSG, stream=True):
            pass
    assert "stream" in str(ei.value)
    status, raw = sse_raw(gateway, {"model": "cutonly", "messages": MSG, "stream": True})
    assert status == 200
    assert "data: [DONE]" not in raw
    frames = [f for f in raw.split("\n\n") if f]
    assert frames[-1].startswith("event: error\ndata: ")
    err = json.loads(frames[-1].split("data: ", 1)[1])["error"]
    assert err["type"] == "server_error" and err["code"] == "upstream_unavailable"
    assert "Hello" in raw   # the partial output did go out first


def test_stream_stalled_after_first_tokens_ends_with_error_event(gateway):
    status, raw = sse_raw(gateway, {"model": "stall", "messages": MSG, "stream": True})
    assert status == 200 and "data: [DONE]" not in raw
    assert raw.rstrip().split("\n\n")[-1].startswith("event: error")


def test_breaker_opens_and_skips_dead_target(gateway):
    c = gateway.client()
    before = gateway.fake.state.count("openai", "b-500")
    attempts = []
    for _ in range(6):
        raw = c.chat.completions.with_raw_response.create(model="breaker", messages=MSG)
        attempts.append(raw.headers["x-thawline-attempts"])
        assert raw.headers["x-thawline-target"] == "breaker/1:oa/gpt-fake"
    # consecutive_failures=4: after four failures the dead target is not called again
    assert attempts == ["2", "2", "2", "2", "1", "1"]
    assert gateway.fake.state.count("openai", "b-500") - before == 4


def test_everything_failing_is_503_in_openai_shape(gateway):
    with pytest.raises(openai.InternalServerError) as ei:
        gateway.client().chat.completions.with_raw_response.create(model="dead", messages=MSG)
    e = ei.value
    assert e.status_code == 503 and e.body["code"] == "upstream_unavailable"
    assert e.response.headers["x-thawline-attempts"] == "2"


def test_metrics_show_breaker_state_and_fallbacks(gateway):
    for _ in range(5):     # enough failures to open it when this test runs alone
        gateway.client().chat.completions.create(model="breaker", messages=MSG)
    req = urllib.request.Request(gateway.base + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    assert 'thawline_gateway_breaker_state{state="open",target="breaker/0:oa/b-500"} 1.0' in text
    assert 'thawline_gateway_fallbacks_total{from_target="breaker/0:oa/b-500",reason="500",route="breaker"}' in text
    assert 'thawline_gateway_requests_total{route="breaker",status="ok",target="oa"}' in text
