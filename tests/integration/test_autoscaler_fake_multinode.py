"""The real Ray autoscaler, driven by cluster/fake-multinode.yaml, adds a GPU worker node when a
task needs a GPU and removes it again once it is idle: node-level scale to zero, on one machine.

Ray 2.60's `ray up` cannot use the fake multinode provider (its defaults file is missing from the
wheel), so the cluster is started the supported way:
`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`. Every process of that cluster
carries a sandbox token (testkit/sandbox.py), so teardown stops exactly this cluster and never
another Ray running on the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

# Imported at collection time on purpose: tests/unit/conftest.py blocks any *new* `ray` import
# for the rest of a combined `pytest tests` session, and Ray's validator imports these lazily.
import ray.autoscaler._private.util  # noqa: E402,F401
import ray.autoscaler.aws  # noqa: E402,F401
import ray.autoscaler.local  # noqa: E402,F401
from cluster.config import deep_merge, load_cluster_config
from cluster.validate import ray_prepare_and_validate
from testkit.sandbox import MARKER_ENV, sandbox_processes, stop_sandbox
from tests.conftest import REPO_ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_CPUS = 4

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
    return ray.get_runtime_context().get_node_id(), os.environ.get("RAY_NODE_TYPE_NAME")

head_id = ray.get_runtime_context().get_node_id()
before = len(gpu_nodes())
t0 = time.monotonic()
node_id, node_type = ray.get(where.remote(), timeout=150)
up_s = time.monotonic() - t0
peak = len(gpu_nodes())
t1 = time.monotonic()
gone = poll(lambda: not gpu_nodes(), 150)
down_s = time.monotonic() - t1
print(json.dumps({"head": head_id, "before": before, "node": node_id, "node_type": node_type,
                  "peak": peak, "gone": gone, "scale_up_s": round(up_s, 1),
                  "scale_down_s": round(down_s, 1)}))
"""


@pytest.fixture(scope="module")
def fake_cluster():
    """A fake-multinode Ray cluster of our own: (gcs address, env for drivers)."""
    token = uuid.uuid4().hex
    # Short path: Ray's unix sockets live under the temp dir and have a ~107 byte limit.
    root = Path(tempfile.mkdtemp(prefix="tl-as-", dir="/tmp"))
    home = root / "home"
    home.mkdir()
    port = free_port()
    config = deep_merge(
        load_cluster_config(REPO_ROOT / "cluster" / "fake-multinode.yaml"),
        {
            "provider": {"gcs_address": f"127.0.0.1:{port}"},
            "available_node_types": {"ray.head.default": {"resources": {"CPU": HEAD_CPUS, "GPU": 0}}},
        },
    )
    ray_prepare_and_validate(config)
    config_path = root / "autoscaler.yaml"
    config_path.write_text(yaml.safe_dump(config))

    env = {
        **os.environ,
        MARKER_ENV: token,
        "RAY_FAKE_CLUSTER": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray 2.60 turns token auth on; a per-run token in the env keeps ~/.ray untouched.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex,
        "HOME": str(home),
        "RAY_TMPDIR": str(root),
        # React within a second instead of Ray's 5 s loop; the scale-down test waits on it.
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    }
    start = [
        RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
        f"--num-cpus={HEAD_CPUS}", "--num-gpus=0", f"--temp-dir={root / 'ray'}",
        f"--autoscaling-config={config_path}", "--include-dashboard=false",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        "--object-store-memory=100000000", "--disable-usage-stats",
    ]
    try:
        started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}"
        yield f"127.0.0.1:{port}", env, token
    finally:
        stop_sandbox(token)
        shutil.rmtree(root, ignore_errors=True)


def test_gpu_task_adds_a_worker_node_and_idleness_removes_it(fake_cluster):
    address, env, token = fake_cluster
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, address], env=env, capture_output=True, text=True, timeout=280,
    )
    assert driver.returncode == 0, f"driver failed:\n{driver.stderr[-4000:]}"
    result = json.loads(driver.stdout.strip().splitlines()[-1])
    print("autoscaler:", result)
    # Scale from zero nodes: no GPU node before, the task ran on a new worker of a GPU type.
    assert result["before"] == 0
    assert result["node"] != result["head"]
    assert result["node_type"] == "gpu-l40s-x1"  # the smallest type that fits {GPU: 1}
    assert result["peak"] == 1
    # ...and back to zero once idle for idle_timeout_minutes.
    assert result["gone"], "the idle GPU worker node was never removed"


def test_teardown_stops_only_this_cluster(fake_cluster):
    _, _, token = fake_cluster
    procs = sandbox_processes(token)
    names = {p.name() for p in procs}
    assert "raylet" in names and "gcs_server" in names
    # Every process found carries exactly this cluster's token (nothing else would be stopped).
    assert all(p.environ().get(MARKER_ENV) == token for p in procs)
