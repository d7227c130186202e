"""The node zygote (serve_apps/llm/zygote.py) with a real local Ray: `thawline cluster preload`
starts it and returns once torch + vLLM are imported; a warm-pool engine host created on that node
(WarmPool's own `_host_actor`) is a fork of it, with its EngineCore forkserver forked from it too;
Ray killing the host takes the host's process group and spares the zygote, which then forks the
next host. No engine is started here (tests/e2e/test_node_scale_to_zero.py serves through one)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from serve_apps.llm import zygote

pytestmark = pytest.mark.timeout(600)
THAWLINE = str(Path(sys.executable).with_name("thawline"))


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _wait(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def node():
    import ray

    root = tempfile.mkdtemp(prefix="tl-zt-", dir="/tmp")  # a unix socket path: <= 107 bytes
    sock = f"{root}/z-{{node_id}}.sock"
    saved = os.environ.get(zygote.SOCKET_ENV)
    os.environ[zygote.SOCKET_ENV] = sock
    status = None
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=f"{root}/ray")
        node_id = ray.get_runtime_context().get_node_id()
        path = sock.replace("{node_id}", node_id)
        # Outside Ray's tree, as a node's start commands run it before `ray start`.
        cli = subprocess.run([THAWLINE, "cluster", "preload", "--socket", path, "--log", f"{root}/z.log"],
                             capture_output=True, text=True, timeout=400)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "imports done in" in cli.stdout, cli.stdout
        status = zygote.read_status(path)
        yield {"node_id": node_id, "socket": path, "status": status, "root": root}
    finally:
        ray.shutdown()
        if status is not None:
            zygote.stop(status["pid"])
        if saved is None:
            os.environ.pop(zygote.SOCKET_ENV, None)
        else:
            os.environ[zygote.SOCKET_ENV] = saved
        shutil.rmtree(root, ignore_errors=True)


def test_preload_imports_vllm_but_never_rays_core(node):
    st = node["status"]
    assert st is not None and st["import_s"] > 0 and st["imported_at"] >= st["started_at"]
    maps = _maps(st["pid"])
    assert "libtorch_cpu.so" in maps  # torch is loaded in the zygote ...
    assert "_raylet.so" not in maps  # ... Ray's core is not (its forks would carry the zygote's Ray settings)
    again = subprocess.run([THAWLINE, "cluster", "preload", "--socket", node["socket"]],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already running" in again.stdout and str(st["pid"]) in again.stdout


def _host_and_forkserver(node) -> tuple[object, psutil.Process, psutil.Process]:
    import ray

    from serve_apps.llm.warm_pool import _host_actor

    host = _host_actor(node["node_id"])
    info = ray.get(host.describe.remote(), timeout=300)
    zyg = psutil.Process(node["status"]["pid"])
    proc = psutil.Process(info["pid"])
    assert info["zygote"]["pid"] == zyg.pid and proc.ppid() == zyg.pid, info  # the host is a fork of the zygote
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(zyg.pid)  # in a process group of its own
    # its EngineCore forkserver: another fork of the zygote, in the host's group
    servers = [c for c in zyg.children() if c.pid != proc.pid and os.getpgid(c.pid) == proc.pid]
    assert len(servers) == 1, [(c.pid, c.cmdline()) for c in zyg.children()]
    return host, proc, servers[0]


def test_a_pooled_host_is_a_fork_and_its_kill_spares_the_zygote(node):
    import ray

    host, proc, server = _host_and_forkserver(node)
    ray.kill(host)
    _wait(lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, 60, "the host process gone")
    _wait(lambda: not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, 60, "its forkserver gone")
    assert zygote.read_status(node["socket"]) is not None  # the zygote lives on
    host2, proc2, _ = _host_and_forkserver(node)  # and forks the next host
    assert proc2.pid != proc.pid
    ray.kill(host2)
