"""Pure cluster-config logic: Terraform-output placeholders, overrides, scale-to-zero rules."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import (
    ClusterConfigError,
    deep_merge,
    find_placeholders,
    load_cluster_config,
    load_tf_outputs,
    render_tf_outputs,
    scale_to_zero_problems,
)

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAMLS = sorted((REPO / "cluster").glob("*.yaml"))

TF_OUTPUTS = {
    "region": "us-west-2",
    "vpc_id": "vpc-0abc",
    "public_subnet_ids": ["subnet-pub-a", "subnet-pub-b"],
    "private_subnet_ids": ["subnet-priv-a", "subnet-priv-b"],
    "ray_security_group_id": "sg-0123",
    "ray_head_instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/thawline-ray-head",
    "ray_worker_instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/thawline-ray-worker",
    "ray_node_ami_id": "ami-0123456789",
    "snapshot_bucket_name": "thawline-snapshots-123456789012",
    "snapshot_store_url": "s3://thawline-snapshots-123456789012/snapshots",
    "node_image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/thawline-node:thawline0.1.0-vllm0.32.0-ray2.60.0",
    "node_image_registry": "123456789012.dkr.ecr.us-west-2.amazonaws.com",
    "gateway_target_group_arn": "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/thawline-gateway/0123",
    "node_secret_arn": "arn:aws:secretsmanager:us-west-2:123456789012:secret:thawline/node-env-AbCdEf",
    "gateway_store_url": "s3://thawline-snapshots-123456789012/gateway",
}


def test_the_three_cluster_yamls_exist():
    assert {p.name for p in CLUSTER_YAMLS} >= {"aws-gpu.yaml", "onprem.yaml", "fake-multinode.yaml"}


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_every_cluster_yaml_scales_workers_to_zero(path):
    assert scale_to_zero_problems(load_cluster_config(path)) == []


def test_aws_gpu_yaml_shape():
    cfg = load_cluster_config(REPO / "cluster" / "aws-gpu.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    instance_families = {t["node_config"]["InstanceType"].split(".")[0] for t in gpu_types.values()}
    assert {"g6e", "p4d", "p5"} <= instance_families
    assert all(t["min_workers"] == 0 for t in gpu_types.values())
    # Scale-from-zero for replicas pinned to an accelerator type needs it declared per node type.
    assert all(any(r.startswith("accelerator_type:") for r in t["resources"]) for t in gpu_types.values())
    assert cfg["idle_timeout_minutes"] > 0
    # Every node runs the pinned node image; Thawline comes from the cluster's own checkout, and
    # nothing (no unpublished package, no unpinned vLLM) is pip-installed from an index at boot.
    assert cfg["docker"]["image"] == "${tf:node_image}" and "--gpus all" in cfg["docker"]["worker_run_options"]
    assert cfg["file_mounts"] == {"~/thawline-src": "."}
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install -q --no-deps --force-reinstall ~/thawline-src" in setup and "thawline[" not in setup
    run_options = " ".join(cfg["docker"]["run_options"])
    assert "THAWLINE_CACHE_DIR=/mnt/nvme/thawline-cache" in run_options and "-v /mnt/nvme:/mnt/nvme" in run_options
    nvme = "\n".join(cfg["initialization_commands"])
    assert "/mnt/nvme" in nvme and "mdadm" in nvme


def test_render_fills_in_terraform_outputs():
    cfg = load_cluster_config(REPO / "cluster" / "aws-gpu.yaml")
    rendered = render_tf_outputs(cfg, TF_OUTPUTS)
    assert find_placeholders(rendered) == set()
    worker = rendered["available_node_types"]["gpu-l40s-x1"]["node_config"]
    assert worker["SubnetIds"] == ["subnet-priv-a", "subnet-priv-b"]  # whole-string list output stays a list
    assert worker["IamInstanceProfile"]["Arn"].endswith("thawline-ray-worker")
    head_nic = rendered["available_node_types"]["head"]["node_config"]["NetworkInterfaces"][0]
    assert head_nic["SubnetId"] == "subnet-pub-a"  # [0] picks one element
    assert rendered["provider"]["region"] == "us-west-2"
    assert "-e THAWLINE_SNAPSHOT_STORE=s3://thawline-snapshots-123456789012/snapshots" in rendered["docker"]["run_options"]
    # The input is left untouched.
    assert "${tf:region}" == cfg["provider"]["region"]


def test_render_reports_missing_outputs_by_name():
    outputs = {k: v for k, v in TF_OUTPUTS.items() if k != "ray_node_ami_id"}
    with pytest.raises(ClusterConfigError, match="ray_node_ami_id"):
        render_tf_outputs(load_cluster_config(REPO / "cluster" / "aws-gpu.yaml"), outputs)


def test_render_rejects_list_embedded_in_a_string_and_bad_index():
    with pytest.raises(ClusterConfigError, match="cannot be embedded"):
        render_tf_outputs({"x": "id=${tf:ids}"}, {"ids": ["a", "b"]})
    with pytest.raises(ClusterConfigError, match=r"no element \[5\]"):
        render_tf_outputs({"x": "${tf:ids[5]}"}, {"ids": ["a"]})


def test_load_tf_outputs_reads_terraform_output_json(tmp_path):
    path = tmp_path / "out.json"
    path.write_text(json.dumps({"region": {"sensitive": False, "type": "string", "value": "eu-west-1"},
                                "plain": 3}))
    assert load_tf_outputs(path) == {"region": "eu-west-1", "plain": 3}
    path.write_text("{not json")
    with pytest.raises(ClusterConfigError, match="not valid JSON"):
        load_tf_outputs(path)
    with pytest.raises(ClusterConfigError, match="not found"):
        load_tf_outputs(tmp_path / "missing.json")


def test_load_cluster_config_errors_are_one_line(tmp_path):
    with pytest.raises(ClusterConfigError, match="not found"):
        load_cluster_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ClusterConfigError) as info:
        load_cluster_config(bad)
    assert "\n" not in str(info.value)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ClusterConfigError, match="mapping"):
        load_cluster_config(bad)


def test_deep_merge_merges_maps_and_replaces_lists():
    base = {"provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["a", "b"]}, "cmds": ["x", "y"]}
    merged = deep_merge(base, {"provider": {"head_ip": "127.0.0.2", "worker_ips": []}, "cmds": ["z"]})
    assert merged == {"provider": {"type": "local", "head_ip": "127.0.0.2", "worker_ips": []}, "cmds": ["z"]}
    assert base["provider"]["head_ip"] == "10.0.0.1"


def test_scale_to_zero_rules_catch_lingering_workers():
    cfg = {
        "head_node_type": "head",
        "available_node_types": {"head": {"min_workers": 0}, "gpu": {"min_workers": 1}},
        "provider": {"type": "aws"},
    }
    problems = scale_to_zero_problems(cfg)
    assert any("idle_timeout_minutes is not set" in p for p in problems)
    assert any("gpu has min_workers 1" in p for p in problems)
    local = {"provider": {"type": "local"}, "idle_timeout_minutes": 0}
    problems = scale_to_zero_problems(local)
    assert any("positive" in p for p in problems) and any("min_workers: 0" in p for p in problems)
