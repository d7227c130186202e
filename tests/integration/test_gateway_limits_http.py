"""Limits through the deployed gateway: two Serve replicas, many concurrent `openai` SDK clients.
The route admits exactly its rpm, however the requests spread over the replicas."""
from __future__ import annotations

import asyncio
import time

import openai
import pytest
import ray
from ray._private.test_utils import wait_for_condition

from tests.integration.conftest_gateway import (PROVIDER_SECRETS, _sha, fake_providers,  # noqa: F401
                                                ray_gateway_session, serve_http_port, unique)

pytestmark = pytest.mark.integration

KEY = "tl-limits-key"
TIGHT_KEY = "tl-limits-tight-key"
RPM = 25


def _config(fake, route: str) -> dict:
    t = {"provider": "oa", "model": "gpt-fake", "first_token_timeout_s": 5, "timeout_s": 10}
    return {
        "providers": {"oa": {"type": "openai_compatible", "base_url": fake.openai_url,
                             "api_key_env": "THAWLINE_TEST_OPENAI_KEY"}},
        "routes": {route: {"targets": [t], "limits": {"rpm": RPM}},
                   f"{route}-tpm": {"targets": [t], "limits": {"tpm": 400}},
                   f"{route}-free": {"targets": [t]}},
        "keys": [{"id": "lim-client", "sha256": _sha(KEY)},
                 {"id": "lim-tight", "sha256": _sha(TIGHT_KEY), "limits": {"rpm": 3, "max_concurrent": 2}}],
        # Generous reclaim wait: on a loaded 2-core box a slow reclaim would be an undershoot.
        "limiter": {"max_wait_s": 5.0},
    }


@pytest.fixture(scope="module")
def gw(fake_providers, ray_gateway_session):
    from ray import serve

    from serve_apps.gateway import build_app

    port = serve_http_port()
    name, route = unique("gw-limits"), unique("lim")
    app = build_app(_config(fake_providers, route), overrides={
        "num_replicas": 2,
        "ray_actor_options": {"num_cpus": 0}})
    serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
    wait_for_condition(lambda: serve.status().applications[name].status == "RUNNING", timeout=120)
    yield f"http://127.0.0.1:{port}/{name}/v1", route
    serve.delete(name)


def _fresh_window(min_left_s: float = 20.0) -> None:
    """rpm windows are wall-clock minutes: keep a burst inside one (bounded wait for a new one)."""
    if 60 - time.time() % 60 < min_left_s:
        start = int(time.time() // 60)
        wait_for_condition(lambda: int(time.time() // 60) > start, timeout=min_left_s + 1)


async def _burst(base: str, key: str, model: str, n: int, clients: int, **kw) -> list:
    """n requests from `clients` separate SDK clients (own connection pools), all at once."""
    sdks = [openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=60) for _ in range(clients)]

    async def one(i: int):
        try:
            raw = await sdks[i % clients].chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8, **kw)
            return raw.headers
        except openai.RateLimitError as e:
            return e

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await asyncio.gather(*(s.close() for s in sdks))


def test_two_replicas_admit_exactly_the_rpm(gw):
    from gateway.limits.broker import get_broker

    base, route = gw
    _fresh_window()
    out = asyncio.run(_burst(base, KEY, route, n=90, clients=30))
    ok = [h for h in out if not isinstance(h, Exception)]
    rejected = [e for e in out if isinstance(e, Exception)]
    assert len(ok) == RPM and len(rejected) == 90 - RPM
    # Both replicas really asked for quota of this route: the limit held across them.
    cell = ray.get(get_broker().stats.remote())["cells"][f"route:{route}|requests"]
    assert cell["askers"] == 2 and sum(cell["held"].values()) <= RPM
    h = ok[0]
    assert h["x-ratelimit-limit-requests"] == str(RPM)
    assert 0 <= int(h["x-ratelimit-remaining-requests"]) < RPM
    e = rejected[0]
    assert e.status_code == 429
    assert e.body["type"] == "rate_limit_error" and e.body["code"] == "rate_limit_exceeded"
    assert route in e.body["message"]
    hdr = e.response.headers
    assert 1 <= int(hdr["retry-after"]) <= 60
    assert hdr["x-ratelimit-limit-requests"] == str(RPM) and hdr["x-ratelimit-remaining-requests"] == "0"
    assert hdr["x-ratelimit-reset-requests"].endswith("s")


def test_key_limits_and_token_headers(gw):
    base, route = gw
    _fresh_window()
    out = asyncio.run(_burst(base, TIGHT_KEY, f"{route}-free", n=8, clients=8))
    assert sum(1 for h in out if not isinstance(h, Exception)) == 2 or \
        sum(1 for h in out if not isinstance(h, Exception)) == 3
    # max_concurrent=2 may refuse some of the 8 simultaneous ones first; never more than rpm=3.
    later = asyncio.run(_burst(base, TIGHT_KEY, f"{route}-free", n=3, clients=1))
    total = sum(1 for h in out + later if not isinstance(h, Exception))
    assert total == 3

    # tpm 400: each request pre-charges prompt estimate + max_tokens 8, settles at 11+5 tokens.
    out = asyncio.run(_burst(base, KEY, f"{route}-tpm", n=4, clients=1))
    h = out[0]
    assert h["x-ratelimit-limit-tokens"] == "400" and int(h["x-ratelimit-remaining-tokens"]) < 400
    big = asyncio.run(_burst(base, KEY, f"{route}-tpm", n=1, clients=1, extra_body={"max_tokens": 500}))
    assert isinstance(big[0], openai.RateLimitError) and "needs more than" in big[0].body["message"]
