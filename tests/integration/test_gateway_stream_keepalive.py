"""A stream behind a load balancer while its model is cold: the gateway (deployed through Serve,
called through the Serve proxy) sends its 200 headers and `: keep-alive` SSE comments until the
first token, the official openai SDK reads the answer unchanged, a target failing before its
first token still falls back invisibly, and a final failure ends with an SSE error event.
Upstream: the loopback fake OpenAI API, delaying its answer (`-dNNNN` models)."""
from __future__ import annotations

import hashlib

import httpx
import openai
import pytest

from tests.integration.conftest_gateway import (fake_providers, own_gateway,  # noqa: F401
                                                ray_gateway_session, unique)

pytestmark = pytest.mark.integration
KEY = "tl-keepalive-client"
MSG = [{"role": "user", "content": "hi"}]


def _config(fake) -> dict:
    def t(model: str, **kw) -> dict:
        return {"provider": "oa", "model": model, "first_token_timeout_s": 30, "timeout_s": 10, "max_retries": 0, **kw}

    return {
        "providers": {"oa": {"type": "openai_compatible", "base_url": fake.openai_url,
                             "api_key_env": "THAWLINE_TEST_OPENAI_KEY"}},
        "routes": {
            "fast": {"targets": [t("ka-fast")]},
            "cold": {"targets": [t("ka-cold-d3000")]},
            "cold-fallback": {"targets": [t("ka-dies-d2000-500"), t("ka-next-d1500")]},
            "cold-fail": {"targets": [t("ka-fails-d2000-500")]},
        },
        "keys": [{"id": "client", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        "breaker": {"consecutive_failures": 50, "min_requests": 1000},
        "server": {"stream_keepalive_s": 0.5},
    }


@pytest.fixture(scope="module")
def gw(fake_providers, ray_gateway_session):  # noqa: F811
    with own_gateway(_config(fake_providers), unique("gw-keepalive"), replicas=1) as base:
        yield base


def _raw(base: str, model: str) -> tuple[httpx.Response, list[str]]:
    """The stream as a load balancer sees it: status, headers, and every SSE line in order."""
    with httpx.Client(timeout=60) as c, c.stream(
            "POST", f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
            json={"model": model, "messages": MSG, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    return r, lines


def _sdk_text(base: str, model: str) -> str:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)
    out = []
    for chunk in client.chat.completions.create(model=model, messages=MSG, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            out.append(chunk.choices[0].delta.content)
    return "".join(out)


def test_fast_stream_is_unchanged(gw):
    r, lines = _raw(gw, "fast")
    assert r.status_code == 200 and r.headers["x-thawline-target"].endswith("oa/ka-fast")
    assert not any(ln.startswith(":") for ln in lines) and lines[-1] == "data: [DONE]"


def test_cold_stream_gets_headers_and_keepalives_before_the_first_token(gw):
    r, lines = _raw(gw, "cold")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    first_data = next(i for i, ln in enumerate(lines) if ln.startswith("data:"))
    # keep-alives, then the target that answered as comment lines (its header could not wait)
    head = lines[:first_data]
    beats = [ln for ln in head if ln == ": keep-alive"]
    outcome = dict(ln[2:].split(": ", 1) for ln in head if ln != ": keep-alive")
    assert beats and head[:len(beats)] == beats and outcome["x-thawline-target"].startswith("cold/")
    assert outcome["x-thawline-attempts"] == "1"
    assert not any(ln.startswith(":") for ln in lines[first_data:])   # none once tokens flow
    assert lines[-1] == "data: [DONE]"
    # the official SDK ignores the comments: the same answer as a warm stream
    assert _sdk_text(gw, "cold") == _sdk_text(gw, "fast") != ""


def test_failure_before_the_first_token_still_falls_back_after_early_headers(gw, fake_providers):  # noqa: F811
    before = fake_providers.state.count("openai", "ka-dies-d2000-500")
    r, lines = _raw(gw, "cold-fallback")
    assert r.status_code == 200
    first_data = next(i for i, ln in enumerate(lines) if ln.startswith("data:"))
    assert lines[0] == ": keep-alive" and first_data > 1
    assert not any("error" in ln for ln in lines) and lines[-1] == "data: [DONE]"
    assert fake_providers.state.count("openai", "ka-dies-d2000-500") == before + 1
    assert _sdk_text(gw, "cold-fallback") == _sdk_text(gw, "fast")


def test_final_failure_after_early_headers_ends_with_an_sse_error_event(gw):
    r, lines = _raw(gw, "cold-fail")
    assert r.status_code == 200 and lines[0] == ": keep-alive"
    assert "event: error" in lines and lines[-1].startswith("data: {") and '"error"' in lines[-1]
    assert "data: [DONE]" not in lines
    with pytest.raises(openai.APIError):
        _sdk_text(gw, "cold-fail")
