"""`thawline snapshot create --on-cluster`: the capture is one Ray task holding the TP group's
resources (num_gpus=tp + accelerator_type on a real cluster). Here: a local Ray head whose only
node declares a custom `snapshot_node` resource (the CPU stand-in for a GPU node type), the
offline engine (no vLLM), and the CLI submitting from outside the cluster by address."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from cluster.cli.snapshot.on_cluster import task_options
from tests.conftest import REPO_ROOT, free_port
from testkit.sandbox import MARKER_ENV, stop_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_task_options_hold_the_tp_groups_gpus_on_the_node_type():
    assert task_options(4, "H100", None) == {"num_gpus": 4, "num_cpus": 1, "resources": {"accelerator_type:H100": 0.001}}
    assert task_options(1, None, '{"num_gpus": 0, "resources": {"x": 1}}') == {"num_gpus": 0, "resources": {"x": 1}}
    with pytest.raises(ValueError, match="--resources"):
        task_options(1, None, '{"gpus": 1}')


# Ray 2.60 clusters authenticate their clients: the head and the CLI share one token.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    # Short temp dir (Ray's socket paths must fit 107 bytes), a free port, and a sandbox token:
    # teardown stops exactly this head. `ray stop` would kill every Ray on the machine, the
    # test session's own included (its driver then exits without a word).
    tmp = Path(tempfile.mkdtemp(prefix="tl-oc-", dir="/tmp"))
    port = free_port()
    token = uuid.uuid4().hex
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO_ROOT), MARKER_ENV: token, **AUTH}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                        '--resources={"snapshot_node": 1}', "--include-dashboard=false",
                        f"--temp-dir={tmp}", "--disable-usage-stats"], check=True, env=env, capture_output=True,
                       timeout=120)
        yield f"{_node_ip()}:{port}"
    finally:
        stop_sandbox(token)
        shutil.rmtree(tmp, ignore_errors=True)


def _node_ip() -> str:
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0", **AUTH}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "cluster.cli.main", "snapshot", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def test_create_on_cluster_runs_on_the_node_with_the_resources(ray_head, tmp_path):
    from cluster.models.tinyllama import generate_llama

    model = generate_llama(tmp_path / "tiny", preset="tiny")
    store = (tmp_path / "store").as_uri()
    stand_in = '{"num_gpus": 0, "num_cpus": 1, "resources": {"snapshot_node": 1}}'
    proc = _cli("create", str(model), "--tp", "2", "--store", store, "--name", "tiny", "--engine", "none",
                "--on-cluster", "--address", ray_head, "--resources", stand_in)
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip().splitlines()[-1]
    assert url.startswith(f"{store}/tiny/")
    from snapshots.store import SnapshotStore

    store_obj, ref = SnapshotStore.for_snapshot(url)
    assert store_obj.load(ref).meta.tp_size == 2
    # What the capture printed on the node came through (streamed by the task, node-prefixed):
    # its source, then its progress, and the URL only on stdout.
    logged = proc.stderr.splitlines()
    assert logged[0].startswith("[") and f"] source {model}" in logged[0], proc.stderr
    assert any("create tp=2" in ln for ln in logged[1:]), proc.stderr
    assert url not in proc.stderr
    # A failure on the node comes back as the one error line of the CLI there.
    proc = _cli("create", str(tmp_path / "missing"), "--store", store, "--name", "x", "--engine", "none",
                "--on-cluster", "--address", ray_head, "--resources", stand_in)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "model dir not found" in errors[0], proc.stderr
    assert proc.stderr.splitlines()[-1] == errors[0]
