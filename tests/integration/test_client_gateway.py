"""The client handle against the real gateway deployed on Serve (shared session fixture), next to
the official openai SDK on the same base URL: same answers, typed errors, the ledger, and the
in-cluster DeploymentHandle transport."""
from __future__ import annotations

import pytest

from gateway.client import AsyncClient, AuthError, BadRequest, Client, Unavailable
from tests.integration.conftest_gateway import (ADMIN_KEY, APP_NAME, CLIENT_KEY, LIMITED_KEY,  # noqa: F401
                                                fake_providers, gateway, ray_gateway_session)


@pytest.fixture(scope="module")
def client(gateway):
    with Client(gateway.v1, api_key=CLIENT_KEY, timeout_s=30) as c:
        yield c


def test_client_and_openai_sdk_get_the_same_answer(gateway, client):
    ours = client.chat("openai", "hello there", max_tokens=5)
    sdk = gateway.client().chat.completions.create(
        model="openai", messages=[{"role": "user", "content": "hello there"}], max_tokens=5)
    assert ours.text == sdk.choices[0].message.content == "Hello from fake openai!"
    assert ours.usage.prompt_tokens == sdk.usage.prompt_tokens
    assert ours.meta.thawline()["attempts"] == "1"
    assert ours.meta.thawline()["target"]


def test_streaming_through_the_gateway(client):
    stream = client.chat("anthropic", "hello", stream=True, max_tokens=5)
    text = stream.text()
    assert text == "Hello from fake anthropic!"  # translated from Anthropic's SSE by the gateway
    assert stream.usage is not None and stream.usage.completion_tokens > 0
    assert stream.meta.thawline()["target"]


def test_fallback_is_visible_in_meta(client):
    r = client.chat("fail500", "x", max_tokens=5)
    assert r.text == "Hello from fake openai!"
    assert int(r.meta.thawline()["attempts"]) >= 2


def test_gateway_errors_are_typed(gateway, client):
    with pytest.raises(Unavailable) as down:
        client.chat("allfail", "x")
    assert down.value.status == 503
    with pytest.raises(BadRequest) as missing:
        client.chat("no-such-route", "x")
    assert missing.value.code == "model_not_found"
    with Client(gateway.v1, api_key="tl-wrong") as bad:
        with pytest.raises(AuthError):
            bad.chat("openai", "x")
    with Client(gateway.v1, api_key=LIMITED_KEY) as limited:
        with pytest.raises(AuthError) as denied:
            limited.chat("anthropic", "x")
        assert denied.value.status == 403


def test_usage_needs_the_admin_key_and_reports_routes(gateway, client):
    client.chat("openai", "count me", max_tokens=3)
    with pytest.raises(AuthError):
        client.usage(group_by="route", admin_key="not-admin")
    from ray._private.test_utils import wait_for_condition

    def has_openai_route():
        report = client.usage(group_by="route", admin_key=ADMIN_KEY)
        return any(r.get("group") == "openai" and r.get("requests", 0) >= 1 for r in report.data)

    wait_for_condition(has_openai_route, timeout=20)


async def test_async_client(gateway):
    async with AsyncClient(gateway.v1, api_key=CLIENT_KEY, timeout_s=30) as c:
        stream = await c.chat("gemini", "hi", stream=True, max_tokens=5)
        assert await stream.text() == "Hello from fake gemini!"
        models = await c.models()
        assert "openai" in {m.id for m in models.data}


def _handle_gateway_app(fake):
    """The real gateway ASGI app behind a Serve deployment exposing the handle protocol with the
    adapter from gateway/handle_ingress.py (what GatewayIngress.api/api_stream are to do). Built in a
    function so cloudpickle ships the class by value (tests/ is not installed on workers)."""
    from ray import serve

    from tests.integration.conftest_gateway import gateway_config

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class HandleGateway:
        def __init__(self, cfg: dict):
            from gateway.app import Gateway
            from gateway.config import parse_config

            self._gateway = Gateway(parse_config(cfg), limits=None, costs=None)

        async def api(self, request: dict) -> dict:
            from gateway.handle_ingress import call_asgi

            return await call_asgi(self._gateway, request)

        async def api_stream(self, request: dict):
            from gateway.handle_ingress import stream_asgi

            async for item in stream_asgi(self._gateway, request):
                yield item

    return HandleGateway.bind(gateway_config(fake))


def _check_handle_client(c: Client) -> None:
    r = c.chat("openai", "hello there", max_tokens=5)
    assert r.text == "Hello from fake openai!" and r.meta.thawline()["attempts"] == "1"
    stream = c.chat("openai", "hi", stream=True)
    assert stream.text() == "Hello from fake openai!" and stream.usage is not None
    assert c.chat("fail500", "x").text == "Hello from fake openai!"
    with pytest.raises(BadRequest):
        c.chat("no-such-route", "x")
    with pytest.raises(BadRequest):
        c.chat("no-such-route", "x", stream=True)  # refused before the stream starts
    with pytest.raises(Unavailable):
        c.chat("allfail", "x")
    with pytest.raises(AuthError):
        Client(handle=c._t._handle, api_key="tl-wrong").models()


def test_in_cluster_handle_transport(gateway):
    """Inside the cluster the client reaches a gateway deployment through a DeploymentHandle,
    with the same API and the same typed errors as over HTTP."""
    from ray import serve

    serve.run(_handle_gateway_app(gateway.fake), name="client-handle-test", route_prefix=None, blocking=False)
    try:
        _check_handle_client(Client.from_app("client-handle-test", api_key=CLIENT_KEY))
    finally:
        serve.delete("client-handle-test")


async def test_in_cluster_handle_async(gateway):
    from ray import serve

    serve.run(_handle_gateway_app(gateway.fake), name="client-handle-async", route_prefix=None, blocking=False)
    try:
        async with AsyncClient.from_app("client-handle-async", api_key=CLIENT_KEY) as c:
            r = await c.chat("openai", "hello there", max_tokens=5)
            assert r.text == "Hello from fake openai!"
            stream = await c.chat("anthropic", "hi", stream=True)
            assert await stream.text() == "Hello from fake anthropic!"
            with pytest.raises(BadRequest):
                await c.chat("no-such-route", "x", stream=True)
    finally:
        serve.delete("client-handle-async")


def test_gateway_deployment_offers_the_handle_protocol(gateway):
    """The shipped gateway deployment itself (serve_apps/gateway.py) through a handle."""
    from serve_apps.gateway import GatewayIngress

    cls = getattr(GatewayIngress, "func_or_class", GatewayIngress)
    if not hasattr(cls, "api"):
        pytest.skip("serve_apps/gateway.py GatewayIngress has no api()/api_stream() yet "
                    "(docs/INTERFACES.md, 'gateway deployment <-> client handle')")
    _check_handle_client(Client.from_app(APP_NAME, api_key=CLIENT_KEY))
