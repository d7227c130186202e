"""testkit/sandbox.py stops exactly the processes carrying its token: never a neighbour's."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from testkit.sandbox import MARKER_ENV, main, sandbox_processes, stop_sandbox

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []

    def spawn(token: str | None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
        if token is not None:
            env[MARKER_ENV] = token
        proc = subprocess.Popen(SLEEPER, env=env)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def test_stops_only_processes_with_this_token(procs):
    token = uuid.uuid4().hex
    mine = [procs(token), procs(token)]
    neighbour = procs(uuid.uuid4().hex)
    unmarked = procs(None)
    found = {p.pid for p in sandbox_processes(token)}
    assert found == {p.pid for p in mine}
    assert stop_sandbox(token, grace_s=5) == 2
    for proc in mine:
        assert proc.wait(timeout=10) is not None
    assert neighbour.poll() is None and unmarked.poll() is None
    assert sandbox_processes(token) == []


def test_spares_itself_and_its_ancestors():
    # A wrapped `ray stop` runs inside shells that carry the token too: they must survive it.
    token = uuid.uuid4().hex
    probe = "from testkit.sandbox import sandbox_processes as s; import sys; print(len(s(sys.argv[1])))"
    out = subprocess.run(
        ["bash", "-c", f'{sys.executable} -c "{probe}" {token}; true'],
        env={**os.environ, MARKER_ENV: token}, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_cli_refuses_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv(MARKER_ENV, raising=False)
    assert main(["stop"]) == 1
    assert "refusing" in capsys.readouterr().err
    with pytest.raises(ValueError):
        sandbox_processes("")
