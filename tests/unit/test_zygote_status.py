"""The node zygote's bookkeeping (serve_apps/llm/zygote.py) without starting one: where its socket
is, when a status file counts as a live zygote, and the socket-path limit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from serve_apps.llm import zygote


def test_socket_path_fills_the_node_id(monkeypatch):
    monkeypatch.setenv(zygote.SOCKET_ENV, "/tmp/z-{node_id}.sock")
    assert zygote.socket_path("abc") == "/tmp/z-abc.sock"
    monkeypatch.delenv("THAWLINE_NODE_ID", raising=False)
    assert zygote.socket_path() == ""  # a template with no node id known: no socket
    monkeypatch.setenv("THAWLINE_NODE_ID", "n1")
    assert zygote.socket_path() == "/tmp/z-n1.sock"
    monkeypatch.delenv(zygote.SOCKET_ENV)
    assert zygote.socket_path("abc") == zygote.DEFAULT_SOCKET


def _write(tmp_path, pid: int, sock: str | None = None, name: str = "z.sock") -> str:
    path = str(tmp_path / name)
    open(path, "w").close()  # stands in for the socket file
    zygote.status_path(path).write_text(json.dumps({"pid": pid, "socket": sock or path}))
    for p in (path, str(zygote.status_path(path))):
        os.chmod(p, 0o600)
    return path


def test_a_live_pid_with_its_own_socket_is_a_live_zygote(tmp_path):
    sock = _write(tmp_path, os.getpid())
    assert zygote.read_status(sock)["pid"] == os.getpid()


def test_a_dead_pid_or_another_socket_is_not(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert zygote.read_status(_write(tmp_path, gone.pid)) is None
    assert zygote.read_status(_write(tmp_path, os.getpid(), sock="/elsewhere.sock")) is None
    assert zygote.read_status(str(tmp_path / "missing.sock")) is None
    assert zygote.read_status("") is None


def test_files_another_user_could_have_planted_are_ignored(tmp_path):
    sock = _write(tmp_path, os.getpid())
    assert zygote.read_status(sock) is not None
    os.chmod(zygote.status_path(sock), 0o666)  # writable by anyone
    assert zygote.read_status(sock) is None
    os.chmod(zygote.status_path(sock), 0o600)
    if os.getuid() == 0:  # as root the test can hand the socket to another user
        os.chown(sock, 65534, 65534)
        assert zygote.read_status(sock) is None


def test_a_zombie_is_dead_too(tmp_path):
    # exited but not reaped yet: os.kill(pid, 0) still succeeds on it
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = f"/proc/{child.pid}/stat"
    deadline = time.monotonic() + 30
    while open(stat).read().rsplit(")", 1)[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.05)
    try:
        assert zygote.read_status(_write(tmp_path, child.pid)) is None
    finally:
        child.wait()


def test_no_zygote_means_no_runtime_env(tmp_path, monkeypatch):
    monkeypatch.setenv(zygote.SOCKET_ENV, str(tmp_path / "z-{node_id}.sock"))
    assert zygote.worker_runtime_env("n1") is None
    _write(tmp_path, os.getpid(), name="z-n1.sock")
    env = zygote.worker_runtime_env("n1")
    assert env["py_executable"].endswith(f"-m serve_apps.llm.zygote_worker --zygote {tmp_path}/z-n1.sock")
    assert env["env_vars"] == {zygote.SOCKET_ENV: f"{tmp_path}/z-n1.sock"}


def test_a_socket_path_over_the_unix_limit_is_refused_before_anything_starts(tmp_path):
    sock = "/tmp/" + "x" * 120 + ".sock"
    with pytest.raises(zygote.ZygoteStartError, match="over the 107"):
        zygote.start_detached(sock, tmp_path / "z.log")
    assert not (tmp_path / "z.log").exists()
