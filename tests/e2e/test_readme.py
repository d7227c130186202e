"""The README's local quickstart, run as pasted: every ```bash block of "## Quickstart: local"
(as one shell script, so its exports carry), then every ```python block against the stack it
started. A README that drifts from the code fails here (that the blocks exist at all is checked
in the unit tier, tests/unit/test_readme_blocks.py).

What the test changes, and why (each is a substitution, the commands themselves are the README's):
- `ray start --head` gets a private GCS, dashboard, dashboard-agent and Ray Client port (the last
  two default to fixed ports another Ray on the machine may hold) and temp dir, and the cluster carries a
  THAWLINE_RAY_SANDBOX token: it must not collide with, or be stopped with, any other Ray on the
  machine (teardown stops only this token's processes, see testkit/sandbox.py);
- THAWLINE_DEMO_DIR is a temp dir; the Serve config is a copy of gateway-serve.yaml on a free
  HTTP port (its ledger and key store are under THAWLINE_DEMO_DIR), and the Python blocks' base
  URL points at that port;
- RAY_ADDRESS / RAY_DASHBOARD_ADDRESS / THAWLINE_BASE_URL name this cluster for the CLI.
Nothing interactive is skipped: the README's `thawline chat` is the one-shot `-m` form.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from testkit.readme import quickstart_blocks
from tests.conftest import REPO_ROOT, free_port

BASH_TIMEOUT_S = 900      # venv check + model + ray start + deploy + a first boot that writes the snapshot
PYTHON_TIMEOUT_S = 300


@pytest.fixture
def sandbox(tmp_path):
    token = f"readme-{uuid.uuid4().hex[:8]}"
    yield token
    env = {**os.environ, "THAWLINE_RAY_SANDBOX": token}
    subprocess.run([sys.executable, "-m", "testkit.sandbox", "stop"], env=env, cwd=REPO_ROOT, timeout=120)


def test_readme_quickstart_runs_as_pasted(tmp_path, sandbox):
    gcs, dash, agent, client, http = free_port(), free_port(), free_port(), free_port(), free_port()
    demo_dir = tmp_path / "demo"
    ray_tmp = Path(f"/tmp/tlr-{uuid.uuid4().hex[:6]}")  # short: Ray's socket paths have a length limit
    base_url = f"http://127.0.0.1:{http}/v1"

    gw = yaml.safe_load((Path(REPO_ROOT) / "serve_apps/configs/gateway-example.yaml").read_text())
    # as shipped: its ledger and key store are under $THAWLINE_DEMO_DIR (the temp dir)
    assert "THAWLINE_DEMO_DIR" in gw["ledger"]["url"] and "THAWLINE_DEMO_DIR" in gw["key_store"]["url"]
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(gw))
    serve = yaml.safe_load((Path(REPO_ROOT) / "serve_apps/configs/gateway-serve.yaml").read_text())
    serve["http_options"]["port"] = http
    for app in serve["applications"]:
        if app["name"] == "gateway":
            app["args"]["config_path"] = str(tmp_path / "gateway.yaml")
    serve_yaml = tmp_path / "gateway-serve.yaml"
    serve_yaml.write_text(yaml.safe_dump(serve))

    lines = []
    for kind, block in quickstart_blocks():
        if kind != "bash":
            continue
        for line in block.splitlines():
            if line.startswith("ray start --head"):
                # the flags go before the line's trailing `# comment`, or the shell ignores them
                cmd, sep, comment = line.partition(" #")
                line = (f"{cmd.rstrip()} --port {gcs} --dashboard-port {dash} --dashboard-host 127.0.0.1"
                        f" --dashboard-agent-listen-port {agent} --ray-client-server-port {client}"
                        f" --temp-dir {ray_tmp}   {sep.strip()}{comment}")
            line = line.replace("serve_apps/configs/gateway-serve.yaml", str(serve_yaml))
            if re.match(r"^(thawline|ray|make) ", line):
                line = f"timeout 600 {line}"
            lines.append(line)
            if line.startswith("export THAWLINE_DEMO_DIR="):
                lines.append(f"export THAWLINE_DEMO_DIR={demo_dir}")
    assert any(ln.partition(" #")[0].rstrip().endswith(f"--temp-dir {ray_tmp}") for ln in lines), "no `ray start --head`"
    script = "set -euxo pipefail\n" + "\n".join(lines) + "\n"
    env = {**os.environ, "THAWLINE_RAY_SANDBOX": sandbox, "RAY_ADDRESS": f"127.0.0.1:{gcs}",
           "RAY_DASHBOARD_ADDRESS": f"http://127.0.0.1:{dash}", "THAWLINE_BASE_URL": base_url,
           "PATH": f"{Path(REPO_ROOT) / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
    try:
        run = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=BASH_TIMEOUT_S)
        assert run.returncode == 0, f"README bash blocks failed:\n{(run.stdout + run.stderr)[-4000:]}"
        assert "tiny-llm" in run.stdout and "Last cold start of tiny-llm" in run.stdout
        # the first chat was a cold start: its phase was shown while it waited, then the target
        assert "cold start of tiny-llm:" in run.stderr and "answered by target tiny/0:local/tiny" in run.stderr
        # `thawline usage` right after the chat already counts it (route tiny, 1 request)
        assert re.search(r"│ tiny\s+│\s+1\s+│", run.stdout), run.stdout[-3000:]
        # the keys commands work against the shipped config's key store
        assert "key id: team-a" in run.stdout and run.stdout.count("secret (shown once") == 2
        assert "revoked team-a" in run.stdout
        for kind, block in quickstart_blocks():
            if kind != "python":
                continue
            code = block.replace("http://127.0.0.1:8000/v1", base_url)
            py = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                                text=True, timeout=PYTHON_TIMEOUT_S)
            assert py.returncode == 0, f"README python block failed:\n{code}\n{(py.stdout + py.stderr)[-3000:]}"
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], timeout=60)
