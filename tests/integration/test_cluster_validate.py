"""Every cluster YAML passes Ray's own validation (the launcher's prepare_config and the
autoscaler's validate_config with ray-schema.json), and `thawline cluster` refuses bad configs
with one clear line before Ray is ever called."""
from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

# Imported at collection time on purpose: tests/unit/conftest.py blocks any *new* `ray` import
# for the rest of a combined `pytest tests` session, and Ray's validator imports these lazily.
import ray.autoscaler._private.util  # noqa: E402,F401
import ray.autoscaler.aws  # noqa: E402,F401
import ray.autoscaler.local  # noqa: E402,F401
from cluster.cli.cluster_cmd import app
from cluster.config import ClusterConfigError, deep_merge, load_cluster_config, render_tf_outputs
from cluster.validate import ray_prepare_and_validate, validate_cluster_config
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

CLUSTER = REPO_ROOT / "cluster"
TF_OUTPUTS = {
    "region": "us-west-2",
    "public_subnet_ids": ["subnet-pub-a"],
    "private_subnet_ids": ["subnet-priv-a", "subnet-priv-b"],
    "ray_security_group_id": "sg-0123",
    "ray_head_instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/thawline-ray-head",
    "ray_worker_instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/thawline-ray-worker",
    "ray_node_ami_id": "ami-0123456789",
    "snapshot_store_url": "s3://thawline-snapshots-123456789012/snapshots",
    "node_image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/thawline-node:thawline0.1.0-vllm0.32.0-ray2.60.0",
    "node_image_registry": "123456789012.dkr.ecr.us-west-2.amazonaws.com",
    "gateway_target_group_arn": "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/thawline-gateway/0123",
    "node_secret_arn": "arn:aws:secretsmanager:us-west-2:123456789012:secret:thawline/node-env-AbCdEf",
    "gateway_store_url": "s3://thawline-snapshots-123456789012/gateway",
}


@pytest.fixture
def tf_outputs_file(tmp_path):
    path = tmp_path / "tf-outputs.json"
    # The shape `terraform output -json` prints.
    path.write_text(json.dumps({k: {"sensitive": False, "type": "string", "value": v} for k, v in TF_OUTPUTS.items()}))
    return path


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "onprem.yaml", "fake-multinode.yaml"])
def test_cluster_yaml_passes_ray_validation(name):
    config = load_cluster_config(CLUSTER / name)
    if name == "aws-gpu.yaml":
        config = render_tf_outputs(config, TF_OUTPUTS)
    prepared = validate_cluster_config(config)
    head = prepared["head_node_type"]
    # The local provider has one node type for the head and the workers alike.
    local = prepared["provider"]["type"] == "local"
    workers = {n: t for n, t in prepared["available_node_types"].items() if local or n != head}
    assert workers and all(t["min_workers"] == 0 for t in workers.values())
    assert all(t["max_workers"] >= 1 for t in workers.values())


def test_onprem_becomes_rays_single_local_node_type():
    prepared = ray_prepare_and_validate(load_cluster_config(CLUSTER / "onprem.yaml"))
    node_type = prepared["available_node_types"]["local.cluster.node"]
    assert (node_type["min_workers"], node_type["max_workers"]) == (0, 2)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"not_a_ray_field": 1}, "Additional properties"),
        ({"available_node_types": {"gpu-l40s-x1": {"resources": {"GPU": 0.5}}}}, "is not of type 'integer'"),
        ({"head_node_type": "nope"}, "head_node_type"),
        ({"max_workers": 0, "available_node_types": {"gpu-l40s-x1": {"min_workers": 1}}}, "max_workers"),
    ],
)
def test_ray_validator_rejects_broken_configs(override, message):
    config = deep_merge(render_tf_outputs(load_cluster_config(CLUSTER / "aws-gpu.yaml"), TF_OUTPUTS), override)
    with pytest.raises(ClusterConfigError, match=message) as info:
        ray_prepare_and_validate(config)
    assert "\n" not in str(info.value)


def test_local_provider_without_head_ip_is_rejected_in_one_line():
    config = load_cluster_config(CLUSTER / "onprem.yaml")
    del config["provider"]["head_ip"]
    with pytest.raises(ClusterConfigError, match="head_ip"):
        ray_prepare_and_validate(config)


runner = CliRunner()


def test_cli_validate_ok(tf_outputs_file):
    result = runner.invoke(app, ["validate", str(CLUSTER / "onprem.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok:") and "idle_timeout_minutes: 10" in result.stdout
    result = runner.invoke(app, ["validate", str(CLUSTER / "aws-gpu.yaml"), "--tf-outputs", str(tf_outputs_file)])
    assert result.exit_code == 0, result.output
    assert "gpu-h100-x8 (0..1)" in result.stdout and "note:" not in result.stdout
    # Without outputs the structure is still checked; the unfilled names are listed.
    result = runner.invoke(app, ["validate", str(CLUSTER / "aws-gpu.yaml")])
    assert result.exit_code == 0, result.output
    assert "note: unfilled terraform outputs" in result.stdout and "ray_node_ami_id" in result.stdout


def test_cli_up_without_terraform_outputs_fails_before_calling_ray():
    result = runner.invoke(app, ["up", str(CLUSTER / "aws-gpu.yaml"), "-y"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "--tf-outputs" in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_rejects_a_config_that_would_not_scale_to_zero(tmp_path, tf_outputs_file):
    config = load_cluster_config(CLUSTER / "aws-gpu.yaml")
    config["available_node_types"]["gpu-a100-x8"]["min_workers"] = 1
    path = tmp_path / "always-on.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["down", str(path), "-y", "--tf-outputs", str(tf_outputs_file)])
    assert result.exit_code == 1
    assert "gpu-a100-x8 has min_workers 1" in result.stderr


def test_cli_missing_config_is_one_line():
    result = runner.invoke(app, ["status", "cluster/does-not-exist.yaml"])
    assert result.exit_code == 1
    assert result.stderr == "error: cluster config not found: cluster/does-not-exist.yaml\n"


def test_cli_render_writes_a_config_ray_accepts(tmp_path, tf_outputs_file):
    out = tmp_path / "aws.resolved.yaml"
    result = runner.invoke(app, ["render", str(CLUSTER / "aws-gpu.yaml"), "--tf-outputs", str(tf_outputs_file), "-o", str(out)])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(out.read_text())
    assert "${tf:" not in out.read_text()
    assert resolved["available_node_types"]["gpu-h100-x8"]["node_config"]["SubnetIds"] == ["subnet-priv-a", "subnet-priv-b"]
    ray_prepare_and_validate(resolved)


def test_cli_prints_exactly_one_line_for_a_ray_abort(tmp_path):
    # Ray's local-provider checks print a coloured PANIC line before raising; only ours shows.
    path = tmp_path / "no-head.yaml"
    path.write_text(yaml.safe_dump({"cluster_name": "x", "provider": {"type": "local", "worker_ips": []},
                                    "idle_timeout_minutes": 1, "min_workers": 0}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Ray validation: Please supply a `head_ip`")
    assert result.stderr.count("\n") == 1 and "PANIC" not in result.stderr
