"""Node-level scale to zero, end to end: zero engine nodes -> a streamed request -> the autoscaler
adds an engine node -> its warm pool and snapshot prefetch start the moment it joins -> the replica
lands there, claims the pooled host, restores from that node's own cache without downloading
again -> first token -> the replica and then the node go away. Twice: the second node gets a
fresh pool (the first one died with its node).

One fake multi-node cluster (testkit/fake_cluster.py, cluster/fake-multinode.yaml's cpu-engine
type) is shared by the tests of this module, in order. The snapshot is the session's tiny engine
snapshot (made by snapshots.vllm_engine.capture.create_engine_snapshot in a child process, conftest.py),
copied to S3 on a loopback moto server. The Serve HTTP proxy runs on the head only; the app's
replicas need `thawline_engine`, which only engine nodes offer. Every wait is a bounded poll;
the seconds seen are printed, never asserted.
"""
from __future__ import annotations

import functools
import json
import time
import urllib.request
from pathlib import Path

import pytest

from cluster.fake_multinode import ENGINE_RESOURCE, fake_multinode_config
from serve_apps.llm.zygote import SOCKET_ENV as ZYGOTE_SOCKET_ENV, read_status
from testkit.fake_cluster import engine_nodes, start_fake_cluster
from testkit.moto_s3 import copy_tree, make_bucket, moto_env
from testkit.serve_deploy import app_running, deploy, llm_app_config, load_config, server_replicas, wait_for
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(900)

APP = "tiny"
IDLE_S = 2  # downscale_delay_s: the replica goes soon after the request
POOL_RETIRE_S = 10  # THAWLINE_WARM_POOL_RETIRE_S: an unused pool lets its node go idle soon
TOKENS = 4


@pytest.fixture(scope="module")
def node_cluster(tiny_snapshot_url, moto_server, e2e_tmp):
    # Everything read and prepared before Ray starts: a failure here leaves nothing running.
    src = Path(tiny_snapshot_url.removeprefix("file://"))
    store = make_bucket(moto_server, "thawline-node-e2e") + "/snaps"
    copy_tree(moto_server, src, f"{store}/tiny/{src.name}", last=("snapshot.json",))
    cache_template = str(e2e_tmp / "nodes" / "{node_id}" / "cache")
    base = load_config("local-cpu.yaml")
    app = llm_app_config(base, name=APP, route_prefix=f"/{APP}", args={
        "model_source": None, "snapshot_store": None, "snapshot_name": None,
        "snapshot_url": f"{store}/tiny/latest",  # `latest` resolved by the prefetch and the replica
        "resources_per_rank": {ENGINE_RESOURCE: 1}, "cold_start_max_wait_s": 600,
        "autoscaling": {"downscale_delay_s": IDLE_S, "look_back_period_s": 1}})
    port = free_port()
    env = {**moto_env(moto_server), "THAWLINE_CACHE_DIR": cache_template,
           "THAWLINE_WARM_POOL_RETIRE_S": str(POOL_RETIRE_S),
           # one node zygote per fake node, started before the node's raylet (cluster/fake_multinode_provider.py)
           ZYGOTE_SOCKET_ENV: str(e2e_tmp / "nodes" / "z-{node_id}.sock")}
    preloading = functools.partial(fake_multinode_config, preload=True)
    with start_fake_cluster(preloading, head_cpus=2, extra_env=env) as fc:
        with fc.connected(namespace="thawline-e2e"):
            from ray import serve

            try:
                deploy([app], port)
                wait_for(lambda: app_running(APP), 180, "the app RUNNING")
                yield {"base": f"http://127.0.0.1:{port}", "store": store, "snapshot_id": src.name,
                       "cache_template": cache_template, "cluster": fc,
                       "zygote_template": env[ZYGOTE_SOCKET_ENV]}
            finally:
                serve.shutdown()


def _state(c) -> dict:
    with urllib.request.urlopen(f"{c['base']}/{APP}/thawline/state", timeout=30) as r:
        return json.loads(r.read())


def _stream_first_token(c) -> tuple[float, float, str]:
    """(request time, seconds to the first token, text) of a streamed completion via the openai SDK."""
    import openai

    client = openai.OpenAI(base_url=f"{c['base']}/{APP}/v1", api_key="unused", timeout=600, max_retries=0)
    t0 = time.time()
    ttft, text = None, []
    for chunk in client.completions.create(model="tiny", prompt="Hello world!", max_tokens=TOKENS,
                                           temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].text:
            ttft = ttft if ttft is not None else time.time() - t0
            text.append(chunk.choices[0].text)
    assert ttft is not None, "the stream ended without a token"
    return t0, ttft, "".join(text)


def _prewarm_of(c, node_id: str, *keys: str) -> dict:
    """The node's prewarm record, once it holds `keys` (the watcher records within ~0.5 s)."""
    found: dict = {}

    def has_them() -> bool:
        found.update(next((r for r in _state(c)["prewarm"] if r["node_id"] == node_id), {}))
        return all(k in found for k in keys)

    wait_for(has_them, 60, f"prewarm record of {node_id} with {keys}", interval=0.5)
    return found


def _cold_start_on_a_new_node(c, seen_nodes: set[str]) -> str:
    """One cold request at zero engine nodes; checks the node-level path and returns the node id."""
    from ray import serve

    from snapshots.cache import SnapshotCache

    assert engine_nodes(ENGINE_RESOURCE) == [] and server_replicas(APP) == 0
    t_req, ttft, text = _stream_first_token(c)
    assert text
    nodes = [n["NodeID"] for n in engine_nodes(ENGINE_RESOURCE)]
    assert len(nodes) == 1 and nodes[0] not in seen_nodes, nodes  # one engine node joined: a new one
    node = nodes[0]
    cold = _state(c)["last_cold_start"]
    assert cold["node_cache"]["node_id"] == node, cold  # the replica ran on the node that joined
    # Its warm pool and snapshot prefetch started when the node joined, before the replica's
    # constructor even ran; the replica then claimed the pre-imported host.
    rec = _prewarm_of(c, node, "node_seen", "pool_ensured", "prefetch_started", "prefetch_done")
    init_start = cold["marks"]["init_start"]
    print(f"\nnode {node[-5:]}: request -> node registered (seen, <= 0.5 s late) {rec['node_seen'] - t_req:.1f} s, TTFT {ttft:.1f} s, "
          f"prefetch {rec['prefetch_bytes'] / 1e6:.1f} MB in {rec['prefetch_s']:.2f} s "
          f"(done {rec['prefetch_done'] - t_req:.1f} s after the request), replica init at "
          f"{init_start - t_req:.1f} s, phases {cold['phases_s']}")
    assert rec["node_seen"] <= rec["pool_ensured"] <= rec["prefetch_started"] < init_start, (rec, cold["marks"])
    assert cold["host"] == "warm_pool", cold
    _check_imported_before_registration(c, node, cold)
    # That node's own cache dir holds the snapshot; the prefetch downloaded it, the restore did not.
    cache_dir = c["cache_template"].replace("{node_id}", node)
    assert cold["node_cache"]["dir"] == rec["cache_dir"] == cache_dir
    assert rec["snapshot_url"] == f"{c['store']}/tiny/{c['snapshot_id']}"  # `latest`, resolved
    cache = SnapshotCache(cache_dir)
    local = cache.local_path(c["store"], "tiny", c["snapshot_id"])
    assert (local / "snapshot.json").is_file() and any(local.glob("rank-0/part-*"))
    assert rec["prefetch_bytes"] > 0
    assert cold["node_cache"]["downloaded_bytes"] == 0, "the replica downloaded the snapshot again"
    downloads = cache.downloads()
    assert {d["by"] for d in downloads} == {f"prewarm:{APP}"}
    assert sum(d["bytes"] for d in downloads) == rec["prefetch_bytes"]
    # The HTTP proxy stays on the head: nothing but the replica's work lands on the engine node.
    assert node not in serve.status().proxies
    return node


def _check_imported_before_registration(c, node: str, cold: dict) -> None:
    """The node's zygote finished importing torch + vLLM before the node's raylet started, and the
    engine host that served was forked from it (so that host imported neither itself)."""
    import ray

    zygote = read_status(c["zygote_template"].replace("{node_id}", node))
    assert zygote is not None, "no live zygote for the engine node"
    # the node's start time as the GCS recorded it when the raylet registered
    infos = ray._private.worker.global_worker.gcs_client.get_all_node_info()
    registered = next(v.start_time_ms for k, v in infos.items() if k.hex() == node) / 1000
    print(f"\nnode {node[-5:]}: zygote imports {zygote['import_s']:.1f} s, done {registered - zygote['imported_at']:.1f} s "
          "before the node started")
    assert zygote["imported_at"] < registered, (zygote, registered)
    assert cold["zygote"] is not None and cold["zygote"]["pid"] == zygote["pid"], cold


def _back_to_zero_nodes(node: str) -> None:
    import ray

    from gateway.names import NAMESPACE, warm_pool_name

    t0 = time.monotonic()
    wait_for(lambda: server_replicas(APP) == 0, 120, f"the replica gone after {IDLE_S}s idle")
    t1 = time.monotonic()
    # The node's warm pool retires, the node goes idle and the autoscaler removes it.
    wait_for(lambda: not engine_nodes(ENGINE_RESOURCE), 180, "the idle engine node removed")
    print(f"\nreplica gone {t1 - t0:.1f} s, node gone {time.monotonic() - t1:.1f} s later")
    with pytest.raises(ValueError):
        ray.get_actor(warm_pool_name(node), namespace=NAMESPACE)


def test_zero_engine_nodes_before_any_request(node_cluster):
    assert engine_nodes(ENGINE_RESOURCE) == []
    assert server_replicas(APP) == 0
    st = _state(node_cluster)
    assert st["state"] == "cold" and st["prewarm"] == []  # the head cannot hold a replica


def test_cold_request_adds_a_prewarmed_node_then_both_go_away(node_cluster):
    node = _cold_start_on_a_new_node(node_cluster, set())
    _back_to_zero_nodes(node)
    node_cluster["first_node"] = node


def test_a_second_node_gets_a_fresh_pool_and_goes_away_too(node_cluster):
    first = node_cluster.get("first_node")
    assert first, "needs the first cold start"
    second = _cold_start_on_a_new_node(node_cluster, {first})
    _back_to_zero_nodes(second)
    assert engine_nodes(ENGINE_RESOURCE) == []
