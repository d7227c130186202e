"""Provider keys never appear in a response or a log line; keys are checked against hashes;
the breaker state is shared by replicas through the BreakerBoard actor."""
from __future__ import annotations

import asyncio
import json
import pathlib
import urllib.error
import urllib.request

import openai
import pytest

from tests.integration.conftest_gateway import (ADMIN_KEY, CLIENT_KEY, LIMITED_KEY, PROVIDER_SECRETS,  # noqa: F401
                                                fake_providers, gateway, ray_gateway_session)

pytestmark = pytest.mark.integration

MSG = [{"role": "user", "content": "hi"}]


def test_provider_keys_reach_upstream_but_never_the_client_or_logs(gateway):
    seen: list[str] = []
    c = gateway.client()
    # errors whose upstream bodies echo the key we sent them (the fakes do, like real 401s)
    for route in ("allfail", "cutonly"):
        try:
            r = c.chat.completions.with_raw_response.create(model=route, messages=MSG)
            seen.append(r.text + str(dict(r.headers)))
        except openai.APIStatusError as e:
            seen.append(e.response.text + str(dict(e.response.headers)) + str(e))
        try:
            for ch in c.chat.completions.create(model=route, messages=MSG, stream=True):
                seen.append(ch.model_dump_json())
        except openai.APIError as e:
            seen.append(str(e) + str(getattr(e, "body", "")))
    for path, key in (("/models", CLIENT_KEY), ("/usage", ADMIN_KEY), ("/../metrics", ADMIN_KEY),
                      ("/../openapi.json", CLIENT_KEY)):
        req = urllib.request.Request(gateway.v1 + path, headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                seen.append(r.read().decode())
        except urllib.error.HTTPError as e:
            seen.append(e.read().decode())
    blob = "\n".join(seen)
    # the upstreams did receive the keys (so the echo path was exercised) ...
    auths = {r["auth"] for r in gateway.fake.state.requests}
    assert any(PROVIDER_SECRETS["THAWLINE_TEST_OPENAI_KEY"] in (a or "") for a in auths)
    assert any(PROVIDER_SECRETS["THAWLINE_TEST_ANTHROPIC_KEY"] == a for a in auths)
    assert "[redacted]" in blob
    # ... and no key came back, whole or in part
    for secret in PROVIDER_SECRETS.values():
        assert secret not in blob and secret[-12:] not in blob
    # nor into any log file of this Ray session (replica, proxy, controller, workers, the
    # runtime_env agent). Ray's runtime_env agent logs every runtime_env a deployer passes,
    # env_vars in clear text, so keys must never travel there: the fixtures pass them through
    # the workers' inherited environment instead, and this scan keeps every test honest.
    import ray
    logs = pathlib.Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any(p.name.startswith("replica_gw-core-test") for p in files)
    for p in files:
        data = p.read_bytes()
        for secret in PROVIDER_SECRETS.values():
            assert secret.encode() not in data, f"{secret[:8]}... leaked into {p}"


def _get(url: str, key: str | None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _openai_error(raw: bytes) -> dict:
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    return err


def test_metrics_need_the_admin_key(gateway):
    """/metrics carries per-route traffic and spend: admin key only (Prometheus sends it)."""
    gateway.client().chat.completions.create(model="openai", messages=MSG)
    for key in (None, CLIENT_KEY, "wrong-key"):
        status, _, raw = _get(gateway.base + "/metrics", key)
        assert status == 401, key
        assert _openai_error(raw)["code"] == "admin_key_required"
    status, headers, raw = _get(gateway.base + "/metrics", ADMIN_KEY)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert "thawline_gateway_cost_usd_total" in raw.decode()


def test_openapi_needs_a_valid_key(gateway):
    for key in (None, "wrong-key"):
        status, _, raw = _get(gateway.base + "/openapi.json", key)
        assert status == 401, key
        assert _openai_error(raw)["code"] == "invalid_api_key"
    for key in (CLIENT_KEY, LIMITED_KEY, ADMIN_KEY):
        status, _, raw = _get(gateway.base + "/openapi.json", key)
        assert status == 200 and "/v1/chat/completions" in json.loads(raw)["paths"]


def test_breaker_board_shares_state_across_replicas(ray_gateway_session):
    from gateway.breaker import OPEN
    from gateway.breaker_actor import BreakerClient
    from gateway.config import BreakerConfig

    async def scenario():
        cfg = BreakerConfig(consecutive_failures=2, cooldown_s=60, sync_interval_s=0.1)
        a, b = BreakerClient("thawline-breakers-test-share", cfg), BreakerClient("thawline-breakers-test-share", cfg)
        a.local.record("t", False)      # one failure seen by each replica: neither opens alone
        b.local.record("t", False)
        assert a.local.state("t") != OPEN and b.local.state("t") != OPEN
        await a.sync_once()
        await b.sync_once()
        await a.sync_once()
        return a.local.state("t"), b.local.state("t"), a.local.allow("t")

    sa, sb, allowed = asyncio.run(scenario())
    assert sa == OPEN and sb == OPEN and not allowed
