"""The real Ray autoscaler, driven by cluster/fake-multinode.yaml, adds a GPU worker node when a
task needs a GPU and removes it again once it is idle (its warm pool retires, so it does not keep
it): node-level scale to zero, on one machine.

Ray 2.60's `ray up` cannot use the fake multinode provider (its defaults file is missing from the
wheel), so the cluster is started the supported way:
`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`. Every process of that cluster
carries a sandbox token (testkit/sandbox.py), so teardown stops exactly this cluster and never
another Ray running on the machine.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Imported at collection time on purpose: tests/unit/conftest.py blocks any *new* `ray` import
# for the rest of a combined `pytest tests` session, and Ray's validator imports these lazily.
import ray.autoscaler._private.util  # noqa: E402,F401
import ray.autoscaler.aws  # noqa: E402,F401
import ray.autoscaler.local  # noqa: E402,F401
from cluster.fake_multinode import fake_multinode_config
from testkit.fake_cluster import REPO_ROOT, start_fake_cluster
from testkit.sandbox import MARKER_ENV, sandbox_processes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HEAD_CPUS = 4
PROBE = "reaches-every-node"

# Runs as its own driver process so it never shares (or disturbs) a Ray the pytest process may
# already be connected to. Waits are bounded polls; the seconds are reported, never asserted.
DRIVER = r"""
import json, sys, time
import ray

ray.init(address=sys.argv[1], log_to_driver=False)

def gpu_nodes():
    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]

def poll(cond, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.25)
    return cond()

# Asks for an accelerator type the way serve_apps' GPU bundles do (a sliver of the resource).
@ray.remote(num_gpus=1, num_cpus=0, resources={"accelerator_type:L40S": 0.001})
def where():
    import os
    return (ray.get_runtime_context().get_node_id(), os.environ.get("RAY_NODE_TYPE_NAME"),
            os.environ.get("THAWLINE_PROBE"))


head_id = ray.get_runtime_context().get_node_id()
before = len(gpu_nodes())
t0 = time.monotonic()
node_id, node_type, probe = ray.get(where.remote(), timeout=150)
up_s = time.monotonic() - t0
peak = len(gpu_nodes())
# Ray counts any live actor as work ("Busy workers on node"), even a resource-less detached one
# such as the warm pool: the pool must retire for the node to go idle.
from serve_apps.llm.warm_pool import get_or_create_pool
pool = get_or_create_pool(node_id, 0)
actor_node = ray.get(pool.stats.remote(), timeout=60)["node_id"]
t1 = time.monotonic()
gone = poll(lambda: not gpu_nodes(), 150)
down_s = time.monotonic() - t1
print(json.dumps({"head": head_id, "before": before, "node": node_id, "node_type": node_type,
                  "probe": probe, "actor_node": actor_node, "peak": peak, "gone": gone, "scale_up_s": round(up_s, 1),
                  "scale_down_s": round(down_s, 1)}))
"""


@pytest.fixture(scope="module")
def fake_cluster():
    """A fake-multinode Ray cluster of our own (testkit/fake_cluster.py)."""
    with start_fake_cluster(fake_multinode_config, head_cpus=HEAD_CPUS,
                            extra_env={"THAWLINE_PROBE": PROBE, "THAWLINE_WARM_POOL_RETIRE_S": "2"}) as fc:
        yield fc


def test_gpu_task_adds_a_worker_node_and_idleness_removes_it(fake_cluster):
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, fake_cluster.address], env=fake_cluster.env, capture_output=True, text=True,
        timeout=280, cwd=REPO_ROOT,
    )
    assert driver.returncode == 0, f"driver failed:\n{driver.stderr[-4000:]}"
    result = json.loads(driver.stdout.strip().splitlines()[-1])
    print("autoscaler:", result)
    # Scale from zero nodes: no GPU node before, the task ran on a new worker of a GPU type.
    assert result["before"] == 0
    assert result["node"] != result["head"]
    assert result["node_type"] == "gpu-l40s-x1"  # the smallest type that fits {GPU: 1}
    assert result["peak"] == 1
    # Env given to the head's `ray start` reaches the workers of nodes the autoscaler adds.
    assert result["probe"] == PROBE
    # ...and back to zero once idle for idle_timeout_minutes: the node's warm pool (a detached
    # actor, which Ray counts as work) retired after THAWLINE_WARM_POOL_RETIRE_S unused.
    assert result["actor_node"] == result["node"]
    assert result["gone"], "the idle GPU worker node was never removed (did its warm pool retire?)"


def test_teardown_stops_only_this_cluster(fake_cluster):
    token = fake_cluster.token
    procs = sandbox_processes(token)
    names = {p.name() for p in procs}
    assert "raylet" in names and "gcs_server" in names
    # Every process found carries exactly this cluster's token (nothing else would be stopped).
    assert all(p.environ().get(MARKER_ENV) == token for p in procs)
