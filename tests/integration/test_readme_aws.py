"""The README's "Quickstart: AWS", run as pasted: every ```bash block of the section as one script
under `set -euo pipefail` (so a variable that no earlier step sets fails it), in a copy of the
repo's config files.

Stand-ins, for what needs an AWS account (each logs its arguments, then checks what it can):
- `terraform`: init/apply do nothing; `output` answers from a fake `terraform output -json` that
  has every output infra/terraform declares;
- `aws`: `secretsmanager put-secret-value` keeps the secret file it was given; `ecr`/`s3` answer;
- `docker login`, `hf download`: accept; `make`: the real make with -n (prints the recipe);
- `ray`: `dashboard`/`exec` need the rendered cluster file; `job submit` is refused unless the
  shell carries the dashboard address and the cluster token, as the real cluster would refuse it;
- `thawline`: the real CLI, except that `cluster up` runs `cluster validate`, `deploy` runs
  `deploy --dry-run`, and the gateway calls (`keys`, `chat`) only log.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

REPO = Path(REPO_ROOT)
README = REPO / "README.md"
API_KEY = "tl-client-key-from-stdin"

SHIMS = {
    "terraform": r'''
echo "terraform $*" >> "$SHIM_LOG"
args=("$@"); [[ ${args[0]} == -chdir=* ]] && args=("${args[@]:1}")
case "${args[0]}" in
  init|apply) exit 0 ;;
  output)
    if [[ ${args[1]} == -json ]]; then cat "$FAKE_TF_OUTPUTS"
    else python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["value"], end="")' \
         "$FAKE_TF_OUTPUTS" "${args[2]}"; fi ;;
  *) echo "unexpected: terraform $*" >&2; exit 2 ;;
esac''',
    "aws": r'''
echo "aws $*" >> "$SHIM_LOG"
case "$1 $2" in
  "ecr get-login-password") echo fake-ecr-password ;;
  "secretsmanager put-secret-value")
    for a in "$@"; do [[ $a == file://* ]] && f=${a#file://} && stat -c %a "$f" > "$SHIM_DIR/secret.mode" \
      && cp "$f" "$SHIM_DIR/secret.json"; done; test -f "$SHIM_DIR/secret.json" ;;
  "s3 sync") ;;
  *) echo "unexpected: aws $*" >&2; exit 2 ;;
esac''',
    "docker": r'''
echo "docker $*" >> "$SHIM_LOG"
[[ $1 == login && " $* " == *" --password-stdin "* ]] && [[ $(cat) == fake-ecr-password ]]''',
    "hf": r'''echo "hf $*" >> "$SHIM_LOG"''',
    "make": r'''echo "make $*" >> "$SHIM_LOG"; /usr/bin/make -n "$@" | tee -a "$SHIM_LOG"''',
    "ray": r'''
echo "ray $*" >> "$SHIM_LOG"
case "$1" in
  dashboard|exec) test -f "$2" ;;
  job) [[ ${RAY_ADDRESS:-} == http://127.0.0.1:8265 && ${RAY_AUTH_MODE:-} == token && -n ${RAY_AUTH_TOKEN:-} ]] \
         || { echo "refused: no dashboard address or cluster token" >&2; exit 4; } ;;
  *) echo "unexpected: ray $*" >&2; exit 2 ;;
esac''',
    "thawline": r'''
echo "thawline $*" >> "$SHIM_LOG"
case "$1 ${2:-}" in
  "cluster up") shift 2; a=(); for x in "$@"; do [[ $x == -y ]] || a+=("$x"); done
                exec "$REAL_THAWLINE" cluster validate "${a[@]}" ;;
  "deploy "*) shift; exec "$REAL_THAWLINE" deploy --dry-run "$@" ;;
  "keys "*|"chat "*) ;;
  *) exec "$REAL_THAWLINE" "$@" ;;
esac''',
}


def aws_blocks() -> list[str]:
    text = README.read_text()
    start = text.index("## Quickstart: AWS")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)


def _declared(kind: str) -> dict:
    found: dict = {}
    for path in (REPO / "infra" / "terraform").glob("*.tf"):
        with path.open() as f:
            for entry in hcl2.load(f).get(kind, []):
                found.update({name.strip('"'): body for name, body in entry.items()})
    return found


def _fake_outputs() -> dict:
    values = {name: f"fake-{name}" for name in _declared("output")}
    values.update({"region": "us-west-2", "public_subnet_ids": ["subnet-a"], "private_subnet_ids": ["subnet-b"],
                   "ray_node_ami_id": "ami-0123456789abcdef0", "snapshot_bucket_name": "tl-snapshots",
                   "snapshot_store_url": "s3://tl-snapshots/snapshots", "gateway_store_url": "s3://tl-snapshots/gateway",
                   "node_image": "123.dkr.ecr.us-west-2.amazonaws.com/thawline-node:t",
                   "node_image_registry": "123.dkr.ecr.us-west-2.amazonaws.com"})
    return {k: {"sensitive": False, "type": "string", "value": v} for k, v in values.items()}


@pytest.fixture
def sandbox(tmp_path):
    work, shims = tmp_path / "repo", tmp_path / "bin"
    for rel in ("cluster", "serve_apps/configs", "infra/terraform"):
        shutil.copytree(REPO / rel, work / rel, ignore=shutil.ignore_patterns("__pycache__", ".terraform", "*.tfstate*",
                                                                             "terraform.tfvars", "tf-outputs.json"))
    shutil.copy(REPO / "Makefile", work / "Makefile")
    shims.mkdir()
    for name, body in SHIMS.items():
        (shims / name).write_text("#!/bin/bash\nset -euo pipefail\n" + body.strip() + "\n")
        (shims / name).chmod(0o755)
    (tmp_path / "tf.json").write_text(json.dumps(_fake_outputs()))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THAWLINE_", "RAY_", "AWS_", "GATEWAY_"))}
    env.update({"PATH": f"{shims}:{REPO / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(home),
                "PYTHONPATH": str(REPO), "SHIM_LOG": str(tmp_path / "shim.log"), "SHIM_DIR": str(tmp_path),
                "FAKE_TF_OUTPUTS": str(tmp_path / "tf.json"), "REAL_THAWLINE": str(REPO / ".venv" / "bin" / "thawline"),
                "RAY_USAGE_STATS_ENABLED": "0"})
    return work, env, tmp_path


def test_the_steps_are_one_numbered_list():
    script = "\n".join(aws_blocks())
    steps = [int(n) for n in re.findall(r"^# (\d+)\. ", script, flags=re.M)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 6
    assert "STORE=" not in script.replace("THAWLINE_SNAPSHOT_STORE=", ""), "one name for the snapshot store"


def test_readme_aws_steps_run_as_pasted(sandbox):
    work, env, tmp = sandbox
    script = "set -euo pipefail\n" + "\n".join(aws_blocks()) + "\nwait\n"
    run = subprocess.run(["bash", "-c", script], cwd=work, env=env, input=API_KEY + "\n", capture_output=True,
                         text=True, timeout=600)
    log = (tmp / "shim.log").read_text() if (tmp / "shim.log").exists() else ""
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\nshims:\n{log[-2000:]}"

    # 1: the tfvars the README writes set every variable that has no default, the AMI pinned.
    with (work / "infra/terraform/terraform.tfvars").open() as f:
        tfvars = hcl2.load(f)
    required = {name for name, body in _declared("variable").items() if "default" not in body}
    assert required <= set(tfvars), f"terraform.tfvars lacks {sorted(required - set(tfvars))}"
    assert re.fullmatch(r"ami-[0-9a-f]{8,17}", tfvars["ray_node_ami_id"].strip('"'))
    # 2: the secret carries the admin key and the cluster token, written mode 600, then deleted.
    secret = json.loads((tmp / "secret.json").read_text())
    assert set(secret) >= {"THAWLINE_ADMIN_KEY", "RAY_AUTH_TOKEN"} and all(secret.values())
    assert (tmp / "secret.mode").read_text().strip() == "600" and not (work / "node-env.json").exists()
    # 3: the image recipe, as make would run it.
    assert "docker build --platform linux/amd64" in log and 'docker push "123.dkr.ecr' in log
    # 4: the cluster validated and rendered with the outputs of step 1.
    assert "ok: cluster/aws-gpu.yaml (aws)" in run.stdout
    assert "${tf:" not in (work / "aws-gpu.resolved.yaml").read_text()
    # 5: both snapshot jobs were submitted with the token, to the bucket the outputs name.
    jobs = [ln for ln in log.splitlines() if ln.startswith("ray job submit")]
    assert len(jobs) == 2 and all("--store s3://tl-snapshots/snapshots" in j for j in jobs)
    assert all("s3://tl-snapshots/models/Llama-3" in j for j in jobs)
    # 6: the deploy config validated with the store variable of step 5.
    assert "serve_apps/configs/aws-cluster.yaml: valid (3 application(s))" in run.stdout
    # 7: the key read from the terminal reached the environment of the calls after it.
    assert "thawline chat llama-3.1-8b" in log


def test_the_snapshot_command_of_the_readme_parses(sandbox):
    """`ray job submit -- thawline snapshot create ...`: every option the README passes exists."""
    work, env, _ = sandbox
    help_text = subprocess.run([env["REAL_THAWLINE"], "snapshot", "create", "--help"], env={**env, "COLUMNS": "300"},
                               capture_output=True, text=True, timeout=120).stdout
    script = "\n".join(aws_blocks()).replace("\\\n", " ")
    for line in script.splitlines():
        if "thawline snapshot create" in line:
            for flag in re.findall(r"\s(--[a-z][a-z-]*)", line.split("thawline snapshot create", 1)[1]):
                assert flag in help_text, f"thawline snapshot create has no {flag}"


def test_status_against_the_dashboard_url_says_what_to_do_in_one_line():
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265", "PYTHONPATH": str(REPO)}
    run = subprocess.run([str(REPO / ".venv" / "bin" / "thawline"), "status"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: ") and line.endswith("ray exec CLUSTER.resolved.yaml 'thawline status'")
