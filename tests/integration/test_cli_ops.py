"""Operator CLI end to end: `thawline deploy`, `status`, `chat`, `usage` run as subprocesses
against a real local Ray cluster with its dashboard (what `serve deploy` talks to), the real
gateway app and a loopback fake upstream.

The cluster runs in a holder subprocess, not in pytest's own process: the CLI is a separate
driver that connects to it, as an operator's shell would, and pytest's in-process Ray (shared by
other modules) stays untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml

from testkit.fake_providers import FakeServer
from tests.conftest import REPO_ROOT, free_port

KEY, ADMIN = "tl-cli-key", "tl-cli-admin"

HOLDER = r"""
import json, sys
import ray
ctx = ray.init(address="local", num_cpus=8, include_dashboard=True, dashboard_host="127.0.0.1",
               dashboard_port=int(sys.argv[1]), log_to_driver=False)
print(json.dumps({"gcs": ctx.address_info["gcs_address"], "dashboard": "http://" + ctx.dashboard_url}), flush=True)
sys.stdin.read()  # hold the cluster until the test closes our stdin
from ray import serve
try:
    serve.shutdown()
finally:
    ray.shutdown()
"""


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def thawline(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 180):
    return subprocess.run([sys.executable, "-m", "cluster.cli.main", *args], cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})}, input=input, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def fake():
    server = FakeServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cached_snapshot(tmp_path_factory):
    """A real snapshot fetched into a node cache dir (memory:// store -> SnapshotCache on disk)."""
    from snapshots.cache import SnapshotCache
    from snapshots.offline import create_offline_snapshot
    from cluster.models.tinyllama import generate_llama

    root = tmp_path_factory.mktemp("cli-ops")
    hf = generate_llama(root / "tiny", preset="tiny")
    url = create_offline_snapshot(hf, tp=1, store_url="memory://cli-ops-store", name="tiny")
    cache_dir = root / "cache"
    SnapshotCache(cache_dir).fetch(url)
    return cache_dir, url.rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def cluster(cached_snapshot):
    cache_dir, _ = cached_snapshot
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "THAWLINE_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(free_port())], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO_ROOT)
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail("the Ray holder process died before printing its addresses")
        yield json.loads(line)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _gateway_cfg(fake: FakeServer) -> dict:
    return {
        "providers": {"up": {"type": "openai_compatible", "base_url": fake.openai_url,
                             "prices": {"gpt-fake": {"input_per_1m": 1.0, "output_per_1m": 2.0}}}},
        "routes": {"echo": {"targets": [{"provider": "up", "model": "gpt-fake", "timeout_s": 10}]}},
        "keys": [{"id": "cli", "sha256": _sha(KEY)}],
        "server": {"admin_key_env": None, "admin_key_sha256": _sha(ADMIN)},
    }


@pytest.fixture(scope="module")
def serve_yaml(tmp_path_factory, fake):
    d = tmp_path_factory.mktemp("cli-ops-cfg")
    (d / "gateway.yaml").write_text(yaml.safe_dump(_gateway_cfg(fake)))
    port = free_port()
    cfg = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {"name": "gateway", "route_prefix": "/", "import_path": "serve_apps.gateway:app",
             "args": {"config_path": str(d / "gateway.yaml"),
                      "deployment": {"ray_actor_options": {"num_cpus": 0}}}},
            # the same app scaled to zero: what `status` must show as 0 replicas, cold
            {"name": "gateway-idle", "route_prefix": "/idle", "import_path": "serve_apps.gateway:app",
             "args": {"config_path": str(d / "gateway.yaml"),
                      "deployment": {"ray_actor_options": {"num_cpus": 0},
                                     "autoscaling_config": {"min_replicas": 0, "max_replicas": 1,
                                                            "initial_replicas": 0}}}},
        ],
    }
    path = d / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, f"http://127.0.0.1:{port}/v1"


def test_deploy_rejects_a_bad_config_in_one_line(tmp_path, fake):
    bad_gw = _gateway_cfg(fake)
    bad_gw["routes"]["echo"]["targets"][0]["timout_s"] = 5  # typo
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(bad_gw))
    cfg = {"applications": [{"name": "gateway", "route_prefix": "/", "import_path": "serve_apps.gateway:app",
                             "args": {"config_path": str(tmp_path / "gw.yaml")}}]}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    r = thawline("deploy", str(tmp_path / "serve.yaml"), "--dry-run")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "routes.echo.targets.0.timout_s" in r.stderr

    cfg["applications"][0]["args"] = {"config_path": str(tmp_path / "gw.yaml"), "replicas": 2}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    r = thawline("deploy", str(tmp_path / "serve.yaml"), "--dry-run")
    assert r.returncode == 1 and "replicas: unknown key" in r.stderr

    r = thawline("deploy", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1 and "no such file" in r.stderr


def test_deploy_status_chat_usage(cluster, serve_yaml, cached_snapshot):
    import httpx
    from ray._private.test_utils import wait_for_condition

    path, base_url = serve_yaml
    r = thawline("deploy", str(path), "--address", cluster["dashboard"])
    assert r.returncode == 0, r.stderr
    assert "args checked against GatewayAppArgs" in r.stdout

    # the gateway answering over HTTP means the deploy went through Serve end to end
    wait_for_condition(lambda: httpx.get(f"{base_url}/models", headers={"authorization": f"Bearer {KEY}"},
                                         timeout=5).status_code == 200, timeout=240, retry_interval_ms=500)

    def status_shows_both() -> str | None:
        st = thawline("status", "--address", cluster["gcs"])
        assert st.returncode == 0, st.stderr
        lines = st.stdout.splitlines()
        idle = [line for line in lines if "gateway-idle" in line]
        return st.stdout if idle and "RUNNING" in idle[0] else None

    wait_for_condition(lambda: status_shows_both() is not None, timeout=120, retry_interval_ms=1000)
    out = status_shows_both()
    idle = next(line for line in out.splitlines() if "gateway-idle" in line)
    assert " 0 " in idle and "cold" in idle
    live = next(line for line in out.splitlines() if "gateway " in line and "idle" not in line)
    assert " 1 " in live and "warm" in live
    _, snapshot_id = cached_snapshot
    assert snapshot_id in out  # the snapshot cached on the (only) node

    empty = thawline("usage", "--base-url", base_url, "--admin-key", ADMIN)
    assert empty.returncode == 0 and empty.stdout == "no usage recorded yet\n", empty.stdout

    chat = thawline("chat", "echo", "-m", "hi there", "--base-url", base_url, "--api-key", KEY)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == "Hello from fake openai!"
    assert "answered by target echo/0:up/gpt-fake" in chat.stderr and "cold start" not in chat.stderr

    interactive = thawline("chat", "echo", "--base-url", base_url, "--api-key", KEY, input="hello\n\n/exit\nignored\n")
    assert interactive.returncode == 0, interactive.stderr
    assert interactive.stdout.count("Hello from fake openai!") == 1

    denied = thawline("chat", "echo", "-m", "x", "--base-url", base_url, "--api-key", "wrong")
    assert denied.returncode == 1 and denied.stderr.startswith("error: 401") and denied.stderr.count("\n") == 1

    def usage_lists_echo() -> bool:
        u = thawline("usage", "--group-by", "route", "--since", "1h", "--base-url", base_url,
                     "--admin-key", ADMIN, timeout=60)
        assert u.returncode == 0, u.stderr
        return "echo" in u.stdout and "total" in u.stdout

    wait_for_condition(usage_lists_echo, timeout=30, retry_interval_ms=500)
    as_json = thawline("usage", "--group-by", "route", "--json", "--base-url", base_url, "--admin-key", ADMIN)
    rows = json.loads(as_json.stdout)["data"]
    echo = next(r for r in rows if r["group"] == "echo")
    assert echo["requests"] >= 2 and echo["cost_usd"] > 0

    no_admin = thawline("usage", "--base-url", base_url, "--admin-key", KEY)
    assert no_admin.returncode == 1 and no_admin.stderr.startswith("error: 401")
