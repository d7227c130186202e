"""Ray's own tools in the README's quickstart shell: the lines of "## Quickstart: local" that set
up Ray's token auth, on a fresh home (no token yet), then `ray start --head`; in that shell
`ray status` and `serve status` exit 0 without a traceback, the dashboard takes the token, and
without the README's setup the same `ray status` is refused (the setup is what makes it work).

Substitutions, and why: HOME is a temp dir (a fresh machine; ~/.ray/auth_token is made there);
`ray start` gets private ports, a short temp dir and a sandbox token, so teardown stops only this
cluster (testkit/sandbox.py).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from testkit.net import free_port, wait_for_port
from testkit.sandbox import MARKER_ENV, stop_sandbox
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def auth_setup_lines() -> list[str]:
    text = (Path(REPO_ROOT) / "README.md").read_text()
    start = text.index("## Quickstart: local")
    section = text[start:text.index("\n## ", start + 1)]
    script = "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))
    return [ln for ln in script.splitlines() if ln.startswith(("export RAY_AUTH", "ray get-auth-token"))]


def _dashboard_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_readme_shell_makes_ray_status_and_serve_status_work(tmp_path):
    setup = auth_setup_lines()
    assert any(ln.startswith("export RAY_AUTH_MODE=token") for ln in setup), setup
    home = tmp_path / "home"
    home.mkdir()
    gcs, dash = free_port(), free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="tl-auth-", dir="/tmp"))
    sandbox = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}", MARKER_ENV: sandbox,
                "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO_ROOT)})
    shell = "set -euo pipefail\n" + "\n".join(setup) + "\n"

    def sh(cmd: str, *, setup_first: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", (shell if setup_first else "") + cmd], env=env, capture_output=True,
                              text=True, timeout=240, cwd=REPO_ROOT)

    try:
        started = sh(f"ray start --head --port={gcs} --dashboard-port={dash} --dashboard-host=127.0.0.1 "
                     f"--num-cpus=1 --temp-dir={ray_tmp} --disable-usage-stats")
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        token = (home / ".ray" / "auth_token").read_text().strip()
        assert token

        # Ray's monitor publishes the first cluster status a few seconds after `ray start`; until then
        # `ray status` exits 0 with "No cluster status" (autoscaler/_private/commands.py). Each try
        # must still be authenticated and clean; the resources must show up within the bound.
        deadline = time.monotonic() + 90
        while True:
            status = sh(f"ray status --address=127.0.0.1:{gcs}")
            assert status.returncode == 0 and "Traceback" not in status.stdout + status.stderr, status.stderr[-2000:]
            if "Resources" in status.stdout or time.monotonic() > deadline:
                break
            assert "No cluster status" in status.stdout, status.stdout[-2000:]
            time.sleep(2)
        assert "Resources" in status.stdout, status.stdout[-2000:]

        url = f"http://127.0.0.1:{dash}"
        wait_for_port("127.0.0.1", dash, timeout_s=120)
        serve_status = sh(f"serve status -a {url}")
        out = serve_status.stdout + serve_status.stderr
        assert serve_status.returncode == 0 and "Traceback" not in out and "AuthenticationError" not in out, out[-2000:]

        # The dashboard in a browser: the token pasted once (sent as a header or cookie) lets it in.
        assert _dashboard_status(url + "/api/version", None) == 401
        assert _dashboard_status(url + "/api/version", token) == 200

        bare = sh(f"ray status --address=127.0.0.1:{gcs}", setup_first=False)
        assert bare.returncode != 0, "ray status worked without the README's setup: the test shows nothing"
    finally:
        stop_sandbox(sandbox)
        shutil.rmtree(ray_tmp, ignore_errors=True)
