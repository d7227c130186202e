"""The gateway-owned listener (`args.listen`, serve_apps/gateway_listener.py), the shipped AWS
ingress: two real Serve replicas of the real gateway app share one loopback port; the official
`openai` SDK talks to it; a stranger without a key gets the OpenAI error shape; a request in flight
when the app is deleted still finishes and lands in the cost ledger."""
from __future__ import annotations

import asyncio
import threading

import httpx
import openai
import pytest
from ray._private.test_utils import wait_for_condition

from gateway.response_headers import REPLICA, TARGET
from tests.conftest import REPO_ROOT, free_port
from tests.integration.conftest_gateway import _sha, fake_providers, ray_gateway_session, unique  # noqa: F401
from tests.integration.test_gateway_costs import _ledger_rows

pytestmark = pytest.mark.integration

KEY = "tl-listener-key"
MSG = [{"role": "user", "content": "hi there"}]
SLOW_S = 6.0      # the in-flight request's upstream delay: it outlasts Serve's own 2 s drain wait
SLOW_MODEL = f"gpt-fake-d{int(SLOW_S * 1000)}"     # testkit/fake_providers.py: -dN delays N ms


def _config(fake, ledger_url: str) -> dict:
    price = {"input_per_1m": 1.0, "output_per_1m": 2.0}
    t = {"provider": "oa", "first_token_timeout_s": 10, "timeout_s": 20}
    return {
        "providers": {"oa": {"type": "openai_compatible", "base_url": fake.openai_url,
                             "api_key_env": "THAWLINE_TEST_OPENAI_KEY",
                             "prices": {"gpt-fake": price, SLOW_MODEL: price}}},
        "routes": {"chat": {"targets": [{**t, "model": "gpt-fake"}]},
                   "slow": {"targets": [{**t, "model": SLOW_MODEL}]}},
        "keys": [{"id": "listener", "sha256": _sha(KEY)}],
        # an hour: only the shutdown flush can write the rows this test reads
        "ledger": {"url": ledger_url, "flush_interval_s": 3600},
    }


@pytest.fixture
def listening_gateway(fake_providers, ray_gateway_session, tmp_path):  # noqa: F811
    from ray import serve

    from serve_apps.gateway import app as gateway_app

    port, name = free_port(), unique("gw-listen")
    application = gateway_app({"config": _config(fake_providers, f"file://{tmp_path}"), "listen": {"port": port},
                               "deployment": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0}}})
    serve.run(application, name=name, route_prefix=f"/{name}", blocking=False)
    wait_for_condition(lambda: serve.status().applications[name].status == "RUNNING", timeout=120)
    state = {"deleted": False}
    yield f"http://127.0.0.1:{port}", name, tmp_path, state
    if not state["deleted"]:
        serve.delete(name)


def test_two_replicas_serve_one_port_with_the_gateways_auth_and_ledger(listening_gateway, fake_providers):  # noqa: F811
    from ray import serve

    base, name, ledger, state = listening_gateway
    c = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=30)
    raw = c.chat.completions.with_raw_response.create(model="chat", messages=MSG, max_tokens=4)
    assert raw.parse().choices[0].message.content
    assert raw.headers[TARGET] and raw.headers[REPLICA]      # answered by the gateway, not around it
    chunks = list(c.chat.completions.create(model="chat", messages=MSG, max_tokens=4, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    # a stranger: no key, a wrong key -> 401 in the OpenAI error shape, never a completion
    for bad in (None, "sk-not-a-key"):
        r = httpx.post(base + "/v1/chat/completions", json={"model": "chat", "messages": MSG},
                       headers={"authorization": f"Bearer {bad}"} if bad else {}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["type"] and "choices" not in r.text

    # both replicas accept on the shared port (the kernel spreads new connections over them)
    seen = set()
    for _ in range(24):
        r = httpx.get(base + "/healthz", headers={"connection": "close"}, timeout=30)
        assert r.status_code == 200
        seen.add(r.headers.get(REPLICA))
    assert len(seen - {None}) == 2, seen

    # a request in flight when the app is deleted finishes, and the ledger has it
    result: dict = {}

    def slow() -> None:
        try:
            result["r"] = c.chat.completions.create(model="slow", messages=MSG, max_tokens=4)
        except Exception as e:  # noqa: BLE001 - the assertion below names it
            result["e"] = e

    before = fake_providers.state.count("openai", SLOW_MODEL)
    t = threading.Thread(target=slow)
    t.start()
    wait_for_condition(lambda: fake_providers.state.count("openai", SLOW_MODEL) > before, timeout=10)   # in flight upstream
    serve.delete(name)
    state["deleted"] = True
    t.join(30)
    assert not t.is_alive()
    assert "e" not in result, result.get("e")
    assert result["r"].choices[0].message.content
    rows = _ledger_rows(ledger)
    assert sorted(r["route"] for r in rows) == ["chat", "chat", "slow"], rows
    with pytest.raises(httpx.ConnectError):   # and nothing listens on the port any more
        httpx.get(base + "/healthz", timeout=5)


def test_listen_the_deployment_cannot_carry_is_refused_by_name():
    from gateway.config import ConfigError
    from serve_apps.gateway import app as gateway_app
    from serve_apps.gateway import build_app

    cfg = {"providers": {}, "routes": {}}
    for dep in ({"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}, {"num_replicas": "auto"}):
        with pytest.raises(ValueError, match="listen.*autoscal"):            # args, as `thawline deploy` checks them
            gateway_app({"config": cfg, "listen": {"port": 18080}, "deployment": dep})
    # a drain that leaves the ledger flush no room inside Serve's force-kill deadline
    with pytest.raises(ValueError, match="graceful_s 15 s plus the 10 s .* exceed .* 20 s"):
        gateway_app({"config": cfg, "listen": {"port": 18080, "graceful_s": 15}})
    gateway_app({"config": cfg, "listen": {"port": 18080, "graceful_s": 15},
                 "deployment": {"graceful_shutdown_timeout_s": 30}})
    from serve_apps.gateway_listener import GatewayListenArgs
    with pytest.raises(ConfigError, match="autoscal"):                        # the Python builder too
        build_app(cfg, overrides={"num_replicas": "auto"}, listen=GatewayListenArgs(port=18080))


def test_thawline_deploy_refuses_listen_with_autoscaling_in_the_deployments_overrides(tmp_path, monkeypatch):
    import yaml

    from cluster.cli.errors import CLIError
    from cluster.cli.ops.deploy import validate_config

    monkeypatch.setenv("THAWLINE_SNAPSHOT_STORE", "s3://b/snapshots")     # as the cluster's nodes export it
    monkeypatch.setenv("THAWLINE_GATEWAY_STORE", "s3://b/gateway")
    doc = yaml.safe_load((REPO_ROOT / "serve_apps" / "configs" / "aws-cluster.yaml").read_text())
    gw = next(a for a in doc["applications"] if a["import_path"] == "serve_apps.gateway:app")
    gw["deployments"] = [{"name": "gateway", "autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}]
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CLIError, match=r"applications\[gateway\]: gateway `listen` with autoscaling"):
        validate_config(path)
    gw["deployments"] = [{"name": "gateway", "num_replicas": 3}]      # a fixed count is fine
    path.write_text(yaml.safe_dump(doc))
    validate_config(path)


def test_a_listener_on_serves_proxy_port_is_refused(ray_gateway_session):  # noqa: F811
    from serve_apps.gateway import refuse_a_serve_proxy_on
    from tests.integration.conftest_gateway import serve_http_port

    proxy_port = serve_http_port()
    # the proxy binds with SO_REUSEPORT too: binding would succeed and silently split connections
    with pytest.raises(RuntimeError, match=f"listen.port {proxy_port} is Serve's HTTP proxy port"):
        asyncio.run(refuse_a_serve_proxy_on(proxy_port))
    asyncio.run(refuse_a_serve_proxy_on(free_port()))
