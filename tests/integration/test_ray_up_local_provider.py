"""`ray up` for real: Ray's local provider brings up a head over SSH from a config derived from
cluster/onprem.yaml, `serve deploy` then serves an app on it, and `ray down` stops it, each Ray
step driven through `thawline cluster up|status|down` (validate first, then call Ray).

The "remote" node is this machine, reached through an sshd the test starts on 127.0.0.2:22 with
its own host key, config and per-run authorized key. Nothing in the real $HOME is touched: the
sshd sets HOME for its sessions to a temp dir whose .bashrc puts the venv's `ray` on the login
PATH (Ray's commands run in login shells, and `ray down` runs a bare `ray stop`).

`ray stop` kills every Ray process on the host, which on a shared machine would take down other
people's clusters. So `ray` on that PATH is a shim: `ray stop` becomes
`python -m testkit.sandbox stop`, which stops only processes carrying this run's sandbox token.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from getpass import getuser
from pathlib import Path

import pytest
import yaml
from filelock import FileLock, Timeout

# Imported at collection time on purpose: tests/unit/conftest.py blocks any *new* `ray` import
# for the rest of a combined `pytest tests` session, and Ray's validator imports these lazily.
import ray.autoscaler._private.util  # noqa: E402,F401
import ray.autoscaler.aws  # noqa: E402,F401
import ray.autoscaler.local  # noqa: E402,F401
from cluster.config import deep_merge, load_cluster_config
from cluster.validate import ray_prepare_and_validate
from testkit.sandbox import MARKER_ENV, sandbox_processes, stop_sandbox
from tests.conftest import REPO_ROOT, free_port, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
HEAD_IP = "127.0.0.2"
VENV_BIN = Path(sys.executable).parent
HELLO_APP = '''
from ray import serve

@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Hello:
    def __call__(self, request):
        return "hello from ray up"

app = Hello.bind()
'''


def _run(cmd: list[str], env: dict, timeout: float, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{what} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="module")
def sandbox():
    """A short temp root, a sandbox token and a per-run Ray auth token."""
    if os.geteuid() != 0:
        pytest.skip("needs root: an sshd on port 22 that logs in as the current user")
    if not (Path(SSHD).exists() and shutil.which("rsync") and shutil.which("ssh-keygen")):
        pytest.skip("openssh-server/rsync/ssh-keygen missing: run `make system-deps`")
    # Short path: Ray's unix sockets live under the temp dir and have a ~107 byte limit.
    root = Path(tempfile.mkdtemp(prefix="tl-up-", dir="/tmp"))
    token = uuid.uuid4().hex
    try:
        yield root, token, uuid.uuid4().hex
    finally:
        stop_sandbox(token)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sshd(sandbox):
    """sshd on 127.0.0.2:22 with its own keys; yields the client's private key path."""
    root, token, auth_token = sandbox
    # One test run at a time may own 127.0.0.2:22 on this machine.
    lock = FileLock("/tmp/thawline-sshd-127.0.0.2-22.lock")
    try:
        lock.acquire(timeout=300)
    except Timeout:
        pytest.fail("another test run held 127.0.0.2:22 for 300 s")
    proc = None
    try:
        if _port_busy(HEAD_IP, 22):
            pytest.skip(f"{HEAD_IP}:22 is taken by a process this test did not start (a system sshd on 0.0.0.0:22?)")
        ssh_dir = root / "ssh"
        ssh_dir.mkdir()
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / name)], check=True, timeout=30)
        shutil.copy(ssh_dir / "client_key.pub", ssh_dir / "authorized_keys")

        home = root / "home"  # HOME of every SSH session: where ~/ray_bootstrap_*.yaml land
        shim = root / "shim"
        app_dir = root / "app"
        for d in (home, shim, app_dir):
            d.mkdir()
        (app_dir / "hello_app.py").write_text(HELLO_APP)
        (shim / "ray").write_text(
            "#!/bin/sh\n"
            "# `ray stop` would stop every Ray on this machine; stop only this sandbox's cluster.\n"
            f'echo "$*" >> {root / "shim-calls.log"}\n'
            f'if [ "$1" = stop ]; then exec {sys.executable} -m testkit.sandbox stop; fi\n'
            f'exec {VENV_BIN / "ray"} "$@"\n'
        )
        (shim / "ray").chmod(0o755)
        # Silent on purpose: rsync's protocol runs through non-interactive shells that source it.
        (home / ".bashrc").write_text(
            f"export PATH={shim}:{VENV_BIN}:$PATH\n"
            f"export {MARKER_ENV}={token}\n"
            f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={auth_token}\n"
            f"export RAY_USAGE_STATS_ENABLED=0 RAY_TMPDIR={root}\n"
            f"export PYTHONPATH={app_dir}:{REPO_ROOT}\n"
        )
        (home / ".profile").write_text(". ~/.bashrc\n")

        config = ssh_dir / "sshd_config"
        config.write_text(
            f"ListenAddress {HEAD_IP}:22\n"
            f"HostKey {ssh_dir / 'host_key'}\n"
            f"AuthorizedKeysFile {ssh_dir / 'authorized_keys'}\n"
            f"PidFile {ssh_dir / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\n"
            # The keys live under /tmp, which StrictModes would reject as world-writable.
            "StrictModes no\n"
            f"SetEnv HOME={home}\n"
        )
        # sshd refuses to start without its privilege-separation dir (normally made by the init
        # script); creating the empty dir is harmless.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        proc = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(ssh_dir / "sshd.log")])
        try:
            wait_for_port(HEAD_IP, 22, timeout_s=30)
        except TimeoutError:
            log = (ssh_dir / "sshd.log").read_text() if (ssh_dir / "sshd.log").exists() else ""
            pytest.fail(f"sshd did not come up on {HEAD_IP}:22 (exit {proc.poll()}): {log[-1000:]}")
        yield ssh_dir / "client_key"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        lock.release()


def _onprem_for_this_machine(key: Path, cluster_name: str, root: Path, ports: dict) -> dict:
    """cluster/onprem.yaml pointed at the sshd on 127.0.0.2, on ports nobody else uses."""
    base = load_cluster_config(REPO_ROOT / "cluster" / "onprem.yaml")
    start_head = (
        f"ray start --head --port={ports['gcs']} --node-ip-address={HEAD_IP}"
        f" --temp-dir={root / 'ray'} --num-cpus=8"
        f" --dashboard-host={HEAD_IP} --dashboard-port={ports['dashboard']}"
        f" --ray-client-server-port={ports['client']} --dashboard-agent-listen-port={ports['agent']}"
        f" --metrics-export-port={ports['metrics']} --runtime-env-agent-port={ports['runtime_env']}"
        " --object-store-memory=200000000 --autoscaling-config=~/ray_bootstrap_config.yaml"
    )
    # This "node" is this checkout: no copy of it to sync (the file mount is for real machines).
    base["file_mounts"] = {}
    return deep_merge(base, {
        "cluster_name": cluster_name,
        "provider": {"head_ip": HEAD_IP, "worker_ips": []},
        "auth": {"ssh_user": getuser(), "ssh_private_key": str(key)},
        "max_workers": 0,
        # This "node" already has the project venv; the pip install steps are for real machines.
        "setup_commands": [],
        "head_start_ray_commands": ["ray stop", start_head],
    })


def test_ray_up_serve_deploy_ray_down(sandbox, sshd):
    root, token, auth_token = sandbox
    cluster_name = f"thawline-test-{token[:8]}"
    client_token = f"{token}-client"
    ports = {k: free_port() for k in ("gcs", "dashboard", "client", "agent", "metrics", "runtime_env", "serve")}
    config = _onprem_for_this_machine(sshd, cluster_name, root, ports)
    ray_prepare_and_validate(config)
    config_path = root / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config))

    client_home = root / "client-home"
    client_home.mkdir()
    env = {
        **os.environ,
        # The client side (ray up/down, its ssh ControlMaster) gets a token of its own: with the
        # head's token, the `ray stop` in head_start_ray_commands would stop `ray up` itself.
        MARKER_ENV: client_token,
        "HOME": str(client_home),
        "RAY_TMPDIR": str(root / "client"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": auth_token,
    }
    (root / "client").mkdir()
    # `thawline cluster ...` (validate, then call Ray), run through its sub-app module.
    thawline_cluster = [sys.executable, "-m", "cluster.cli.cluster_cmd"]
    ssh_control_dir = Path("/tmp") / ("ray_ssh_" + hashlib.sha256(getuser().encode()).hexdigest()[:10]) / hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
    try:
        t0 = time.monotonic()
        _run([*thawline_cluster, "up", str(config_path), "-y", "--no-config-cache"], env, 240, "thawline cluster up")
        print(f"thawline cluster up (ray up) took {time.monotonic() - t0:.1f}s")
        names = {p.name() for p in sandbox_processes(token)}
        assert {"raylet", "gcs_server"} <= names, f"no head processes after ray up: {names}"
        t = time.monotonic()
        status = _run([*thawline_cluster, "status", str(config_path)], env, 120, "thawline cluster status")
        print(f"thawline cluster status took {time.monotonic() - t:.1f}s")
        assert "1 local.cluster.node" in status.stdout, status.stdout[-2000:]

        serve_config = root / "serve.yaml"
        serve_config.write_text(yaml.safe_dump({
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": ports["serve"]},
            "applications": [{"name": "hello", "route_prefix": "/", "import_path": "hello_app:app"}],
        }))
        t = time.monotonic()
        _run([str(VENV_BIN / "serve"), "deploy", str(serve_config), "--address", f"http://{HEAD_IP}:{ports['dashboard']}"], env, 120, "serve deploy")
        body = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports['serve']}/", timeout=5) as resp:
                    body = resp.read().decode()
                    break
            except OSError:
                time.sleep(0.5)  # bounded poll for the app to come up
        assert body == "hello from ray up"
        print(f"serve deploy until the app answered took {time.monotonic() - t:.1f}s")
        t = time.monotonic()

        _run([*thawline_cluster, "down", str(config_path), "-y"], env, 120, "thawline cluster down")
        deadline = time.monotonic() + 30
        left = sandbox_processes(token)
        while time.monotonic() < deadline and any(p.name() in ("raylet", "gcs_server") for p in left):
            time.sleep(0.25)
            left = sandbox_processes(token)
        assert not any(p.name() in ("raylet", "gcs_server") for p in left), "ray down left the head running"
        print(f"thawline cluster down took {time.monotonic() - t:.1f}s")
        # Both of Ray's bare `ray stop`s (before `ray start`, and `ray down`) went through the shim.
        calls = (root / "shim-calls.log").read_text().splitlines()
        assert calls.count("stop") >= 2 and any(c.startswith("start --head") for c in calls), calls
    finally:
        stop_sandbox(token)  # whatever a failed step left on the "node"
        stop_sandbox(client_token)  # the ssh ControlMaster ray up leaves for ControlPersist
        shutil.rmtree(ssh_control_dir, ignore_errors=True)
