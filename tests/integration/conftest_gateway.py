"""Shared gateway fixtures: fake upstreams, a Ray session, one deployed gateway app.

Not a conftest.py (so other packages' tests do not load it): gateway test modules import the
fixtures they use, e.g. `from tests.integration.conftest_gateway import fake_providers, gateway`.
The fake server and the deployed gateway are cached process-wide (`_SHARED`), so every module
that imports the fixtures shares one of each (Serve start-up is the expensive part of these
tests). Fake counters are shared too: assert on deltas, not totals.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import uuid

import pytest

from testkit.fake_providers import FakeServer
from tests.conftest import free_port

# Fake provider secrets: distinctive strings that tests grep for in responses and logs.
PROVIDER_SECRETS = {
    "THAWLINE_TEST_OPENAI_KEY": "sk-test-OPENAI-" + "s3cr3t0penai7x",
    "THAWLINE_TEST_ANTHROPIC_KEY": "sk-ant-test-" + "s3cr3tAnthr0pic9",
    "THAWLINE_TEST_GEMINI_KEY": "AIzaTEST" + "s3cr3tGem1niKey42",
}
# Provider keys reach replicas through the Ray workers' inherited environment, set here at import
# (collection time, before any module of the session starts Ray). NOT through runtime_env
# env_vars: Ray's runtime_env agent writes those to runtime_env_agent.log in clear text, which
# test_gateway_security caught.
os.environ.update(PROVIDER_SECRETS)

CLIENT_KEY = "tl-test-client-key"
LIMITED_KEY = "tl-test-limited-key"
ADMIN_KEY = "tl-test-admin-key"
APP_NAME = "gw-core-test"
LOCAL_APP = "gw-core-fake-llm"     # the fake local LLM app (testkit/fake_llm.py) the `local` routes use
ROUTE_PREFIX = "/core"


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def gateway_config(fake: FakeServer) -> dict:
    """One config with a route per scenario (each scenario uses its own upstream model names, so
    breaker state and fake counters never leak between tests)."""
    oa = {"type": "openai_compatible", "base_url": fake.openai_url, "api_key_env": "THAWLINE_TEST_OPENAI_KEY",
          "prices": {"gpt-fake": {"input_per_1m": 1.0, "output_per_1m": 2.0, "cached_input_per_1m": 0.5}}}

    def t(provider: str, model: str, **kw) -> dict:
        return {"provider": provider, "model": model, "first_token_timeout_s": 5, "timeout_s": 10, **kw}

    return {
        "providers": {
            "oa": oa,
            "an": {"type": "anthropic", "base_url": fake.anthropic_url, "api_key_env": "THAWLINE_TEST_ANTHROPIC_KEY"},
            "ge": {"type": "gemini", "base_url": fake.gemini_url, "api_key_env": "THAWLINE_TEST_GEMINI_KEY"},
            "local": {"type": "serve", "app": LOCAL_APP, "usd_per_hour": 1.0},
        },
        "routes": {
            "openai": {"targets": [t("oa", "gpt-fake")]},
            "anthropic": {"targets": [t("an", "claude-fake")]},
            "gemini": {"targets": [t("ge", "gemini-fake")]},
            # fail500/allfail are shared with other modules' tests (test_client_gateway); the
            # retry500/dead copies are test_gateway_fallback's own, so breaker state one test
            # leaves behind never changes another's attempt counts
            "fail500": {"targets": [t("oa", "f500-500", max_retries=1), t("oa", "gpt-fake")]},
            "retry500": {"targets": [t("oa", "r500-500", max_retries=1), t("oa", "gpt-fake")]},
            "dead": {"targets": [t("oa", "d-500"), t("an", "d-500")]},
            "rl429": {"targets": [t("oa", "r429-429", max_retries=1), t("an", "claude-fake")]},
            "hang": {"targets": [t("oa", "h-hang", first_token_timeout_s=0.5), t("ge", "gemini-fake")]},
            "cut": {"targets": [t("oa", "c-cut"), t("an", "claude-fake")]},
            "cutonly": {"targets": [t("oa", "co-cut")]},
            "stall": {"targets": [t("an", "s-stall", timeout_s=0.5)]},
            "breaker": {"targets": [t("oa", "b-500"), t("oa", "gpt-fake")]},
            "allfail": {"targets": [t("oa", "a-500"), t("an", "a-500")]},
            "capped": {"targets": [t("oa", "gpt-fake")], "max_tokens_cap": 2},
            "local": {"targets": [t("local", "tiny"), t("oa", "gpt-fake")], "spillover_when_cold": True},
            "localcut": {"targets": [t("local", "tiny-cut"), t("oa", "gpt-fake")]},
            # a translating target first, a pass-through fallback behind it: a malformed request
            # must end at the first with 400 (no fallback, no breaker failure)
            "shape-an": {"targets": [t("an", "shape-claude"), t("oa", "shape-gpt-an")]},
            "shape-ge": {"targets": [t("ge", "shape-gemini"), t("oa", "shape-gpt-ge")]},
        },
        "keys": [
            {"id": "client", "sha256": _sha(CLIENT_KEY)},
            {"id": "limited", "sha256": _sha(LIMITED_KEY), "routes": ["openai"]},
        ],
        # 4: the breaker must open in test_breaker_opens..., but not on routes whose tests (also
        # other modules', e.g. test_client_gateway's fail500) count attempts after a few failures
        "breaker": {"consecutive_failures": 4, "cooldown_s": 300, "sync_interval_s": 0.2},
        "retry": {"budget": 3, "backoff_base_s": 0.01, "backoff_max_s": 2.0},
        "server": {"max_body_bytes": 65536, "admin_key_sha256": _sha(ADMIN_KEY)},
    }


# Process-wide singletons: every test module that imports these fixtures gets its own (session-
# scoped) FixtureDef, so without this each module would start its own fake server and redeploy
# the gateway. The first fixture instance creates the object and tears it down at session end.
_SHARED: dict = {}


@pytest.fixture(scope="session")
def fake_providers(request):
    if "fake" not in _SHARED:
        srv = _SHARED["fake"] = FakeServer(free_port()).start()

        def stop():
            _SHARED.pop("fake", None)
            srv.stop()
        request.addfinalizer(stop)
    return _SHARED["fake"]


@pytest.fixture(scope="session")
def ray_gateway_session():
    """Joins the session's Ray if another module started one, else starts (and stops) one."""
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    if started and ray.is_initialized():   # a module that needs a Ray of its own may have ended it
        from ray import serve
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def end_session_ray() -> None:
    """For a module that must start Ray itself (e.g. with env vars its replicas inherit): stop the
    session's Ray and Serve now and forget what was deployed on them. No later module may use
    the session gateway fixtures (their teardown then finds Ray gone and does nothing)."""
    import ray

    if not ray.is_initialized():
        return
    from ray import serve
    _SHARED.pop("gateway", None)
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def serve_http_port() -> int:
    """Start Serve on a free loopback port, or return the port of the Serve already running."""
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=False)
    except Exception:
        client = None
    if client is None:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        client = _get_global_client()
    return ray.get(client._controller.get_http_config.remote()).port


@pytest.fixture(scope="session")
def gateway(fake_providers, ray_gateway_session, request):
    """The gateway deployed through Serve like users deploy it (once per test process)."""
    if "gateway" in _SHARED:
        return _SHARED["gateway"]
    from ray import serve
    from ray._private.test_utils import wait_for_condition
    from serve_apps.gateway import build_app

    port = serve_http_port()
    app = build_app(gateway_config(fake_providers), overrides={"ray_actor_options": {"num_cpus": 0}})
    serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX, blocking=False)
    wait_for_condition(lambda: serve.status().applications[APP_NAME].status == "RUNNING", timeout=120)
    handle = _SHARED["gateway"] = GatewayHandle(base=f"http://127.0.0.1:{port}{ROUTE_PREFIX}",
                                                fake=fake_providers, port=port)

    def delete():
        import ray
        _SHARED.pop("gateway", None)
        if ray.is_initialized():   # else end_session_ray() took it down with the whole Serve
            serve.delete(APP_NAME)
    request.addfinalizer(delete)
    return handle


class GatewayHandle:
    def __init__(self, base: str, fake: FakeServer, port: int):
        self.base, self.fake, self.port = base, fake, port
        self.v1 = base + "/v1"

    def client(self, key: str = CLIENT_KEY, **kw):
        import openai
        return openai.OpenAI(base_url=self.v1, api_key=key, max_retries=0, timeout=30, **kw)

    def aclient(self, key: str = CLIENT_KEY, **kw):
        import openai
        return openai.AsyncOpenAI(base_url=self.v1, api_key=key, max_retries=0, timeout=30, **kw)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def own_gateway(cfg: dict, name: str, *, replicas: int = 2):
    """A gateway app of a test module's own (`replicas` replicas, deployed through Serve like the
    shared one), removed afterwards; yields its base URL (append /v1 for the API)."""
    from ray import serve
    from ray._private.test_utils import wait_for_condition

    from serve_apps.gateway import build_app

    port = serve_http_port()
    app = build_app(cfg, overrides={"num_replicas": replicas, "ray_actor_options": {"num_cpus": 0}})
    serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
    try:
        wait_for_condition(lambda: serve.status().applications[name].status == "RUNNING", timeout=120)
        yield f"http://127.0.0.1:{port}/{name}"
    finally:
        serve.delete(name)

