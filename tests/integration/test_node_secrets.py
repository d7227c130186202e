"""The AWS nodes' secrets, end to end on one machine: a KMS-encrypted secret in moto's Secrets
Manager (a moto server on loopback, reached by the real boto3 client), cluster/aws-gpu.yaml's own
setup and start commands (Terraform outputs filled in), a real `ray start --head` that sources the
rendered env file, and a Ray task (a process Ray started, like a gateway replica) that reads the
environment the apps read: the gateway's admin key check accepts the admin key, the hosted
provider finds its key, and the cluster runs with the token of the secret.

Substitutions, and why: HOME is a temp dir (the commands write ~/.thawline); the start command's
`ray start` gets a private port and temp dir and a sandbox token (teardown stops only this
cluster); `ulimit -n 65536` is dropped (this machine's hard limit is lower; EC2's is not).
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from cluster.config import load_cluster_config, render_tf_outputs
from testkit.moto_s3 import moto_s3_server
from testkit.net import free_port
from testkit.sandbox import MARKER_ENV, stop_sandbox
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
# A value with every shell hazard: quotes, $, backticks, spaces, a newline.
HAZARD = "tg-'q' \"dq\" $HOME `id` x\ny"


@pytest.fixture(scope="module")
def moto():
    with moto_s3_server() as endpoint:
        yield endpoint


def _put_secret(value: dict) -> str:
    import boto3

    kms = boto3.client("kms")
    key = kms.create_key(Description="thawline test")["KeyMetadata"]["Arn"]
    sm = boto3.client("secretsmanager")
    arn = sm.create_secret(Name=f"thawline/node-env-{uuid.uuid4().hex[:6]}", KmsKeyId=key)["ARN"]
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps(value))
    return arn


def _node_commands(secret_arn: str) -> dict:
    cluster = load_cluster_config(REPO_ROOT / "cluster" / "aws-gpu.yaml")
    outputs = {"region": "us-east-1", "public_subnet_ids": ["s-a"], "private_subnet_ids": ["s-b"],
                    "ray_security_group_id": "sg-1", "ray_head_instance_profile_arn": "arn:h",
                    "ray_worker_instance_profile_arn": "arn:w", "ray_node_ami_id": "ami-0123456789abcdef0",
                    "snapshot_store_url": "s3://b/snapshots", "gateway_store_url": "s3://b/gateway",
                    "node_image": "r/thawline:t", "node_image_registry": "r", "gateway_target_group_arn": "arn:tg",
                    "node_secret_arn": secret_arn}
    return render_tf_outputs(cluster, outputs)


def _bash(cmd: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT)


def _node_env(home: Path, cluster: dict) -> dict:
    """The container's environment: the docker `-e` values of aws-gpu.yaml's run_options."""
    docker_env = dict(opt[3:].split("=", 1) for opt in cluster["docker"]["run_options"] if opt.startswith("-e "))
    return {**os.environ, "HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO_ROOT),
            "RAY_USAGE_STATS_ENABLED": "0", **docker_env}


def test_node_setup_renders_the_secret_and_ray_start_hands_it_to_the_apps(moto, tmp_path):
    token = secrets.token_hex(32)
    values = {"THAWLINE_ADMIN_KEY": f"adm-{uuid.uuid4().hex}", "RAY_AUTH_TOKEN": token, "TOGETHER_API_KEY": HAZARD}
    cluster = _node_commands(_put_secret(values))
    home = tmp_path / "home"
    home.mkdir()
    env = _node_env(home, cluster)
    assert env["RAY_AUTH_MODE"] == "token" and env["THAWLINE_GATEWAY_STORE"] == "s3://b/gateway"

    for cmd in cluster["setup_commands"]:
        if "pip install" in cmd:
            continue  # the checkout is on PYTHONPATH already
        run = _bash(cmd, env)
        assert run.returncode == 0, run.stderr
        for v in values.values():
            assert v not in run.stdout + run.stderr, "a secret value was printed"
    env_file = home / ".thawline" / "node.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert ". ~/.thawline/node.env" in (home / ".bashrc").read_text()

    start = next(c for c in cluster["head_start_ray_commands"] if "ray start" in c)
    prefix = start.split("ray start", 1)[0].replace("ulimit -n 65536;", "")
    port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="tl-sec-", dir="/tmp"))
    sandbox = uuid.uuid4().hex
    head_env = {**env, MARKER_ENV: sandbox}
    try:
        run = _bash(f"{prefix} ray start --head --port={port} --num-cpus=1 --include-dashboard=false "
                    f"--temp-dir={tmp} --disable-usage-stats", head_env, timeout=180)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        probe = ("import json, os, ray\n"
                 f"ray.init(address='127.0.0.1:{port}', logging_level='ERROR')\n"
                 "@ray.remote(num_cpus=0)\n"
                 "def apps_view():\n"
                 "    from gateway.config import load_config\n"
                 "    from gateway.key_auth import KeyAuth\n"
                 "    from gateway.config import expand_store_urls\n"
                 "    cfg = expand_store_urls(load_config('serve_apps/configs/gateway-aws.yaml'))\n"
                 "    auth = KeyAuth(cfg)\n"
                 "    admin = os.environ['THAWLINE_ADMIN_KEY']\n"
                 "    return {'admin_ok': auth.is_admin('Bearer ' + admin), 'wrong_refused': not auth.is_admin('Bearer x'),\n"
                 "            'provider_key': os.environ.get(cfg.providers['together'].api_key_env),\n"
                 "            'key_store': cfg.key_store.url, 'ledger': cfg.ledger.url, 'admin': admin}\n"
                 "print(json.dumps(ray.get(apps_view.remote())))\n")
        # A driver on the node: a login shell there sources the env file (.bashrc), token included.
        run = _bash(f". {env_file}; python -c {shlex.quote(probe)}", head_env, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        assert seen == {"admin_ok": True, "wrong_refused": True, "provider_key": HAZARD,
                        "key_store": "s3://b/gateway/keys", "ledger": "s3://b/gateway/ledger",
                        "admin": values["THAWLINE_ADMIN_KEY"]}
        # The cluster runs with the secret's token: a client without it is refused.
        ok = _bash(f". {env_file}; ray status --address=127.0.0.1:{port}", head_env)
        assert ok.returncode == 0 and "Traceback" not in ok.stderr, ok.stderr[-2000:]
        other = {**head_env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        refused = _bash(f"ray status --address=127.0.0.1:{port}", other)
        assert refused.returncode != 0
    finally:
        stop_sandbox(sandbox)
        shutil.rmtree(tmp, ignore_errors=True)


def test_render_env_fails_in_one_line_without_showing_values(moto, tmp_path):
    arn = _put_secret({"THAWLINE_ADMIN_KEY": "adm-secret-value"})
    env = _node_env(tmp_path, _node_commands(arn))
    out = tmp_path / "node.env"
    run = _bash(f"thawline cluster render-env --secret-id {arn} --require RAY_AUTH_TOKEN -o {out}", env)
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        f"error: secret {arn} does not set RAY_AUTH_TOKEN"]
    assert "adm-secret-value" not in run.stdout + run.stderr and not out.exists()

    run = _bash(f"thawline cluster render-env --secret-id thawline/missing -o {out}", env)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == ["error: cannot read secret thawline/missing: ResourceNotFoundException"]

    import boto3

    bad = boto3.client("secretsmanager").create_secret(Name=f"bad-{uuid.uuid4().hex[:6]}",
                                                       SecretString="not-json-value")["ARN"]
    run = _bash(f"thawline cluster render-env --secret-id {bad} -o {out}", env)
    assert run.returncode == 1 and "not JSON" in run.stderr and "not-json-value" not in run.stderr
