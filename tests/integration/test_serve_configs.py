"""serve_apps/configs/*.yaml: valid for Ray Serve's own ServeDeploySchema, and every
`serve_apps.llm:app` application's args valid for LLMAppArgs and buildable into a Serve app.
No cluster needed: building an Application only binds deployments."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_apps.llm.args import LLMAppArgs

CONFIGS = Path(__file__).resolve().parents[2] / "serve_apps" / "configs"
LLM_CONFIGS = ["local-cpu.yaml", "gpu-8b-tp1.yaml", "gpu-70b-tp4.yaml", "aws-cluster.yaml"]


@pytest.fixture(autouse=True)
def node_env(monkeypatch):
    """What cluster/aws-gpu.yaml's nodes export (tests/integration/test_cluster_serve_fit.py checks
    that every variable a config reads is exported)."""
    monkeypatch.setenv("THAWLINE_SNAPSHOT_STORE", "s3://thawline-snapshots-123456789012/snapshots")


def _llm_apps(doc: dict) -> list[dict]:
    return [a for a in doc["applications"] if a["import_path"] == "serve_apps.llm:app"]


@pytest.mark.parametrize("name", LLM_CONFIGS)
def test_config_is_a_valid_serve_deploy_config(name):
    doc = yaml.safe_load((CONFIGS / name).read_text())
    ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)
    assert _llm_apps(doc), f"{name} has no serve_apps.llm:app application"


@pytest.mark.parametrize("name", LLM_CONFIGS)
def test_llm_args_validate_and_build(name, monkeypatch):
    from serve_apps.llm import app

    monkeypatch.delenv("THAWLINE_DEMO_DIR", raising=False)
    # The GPU configs read the store URL from the node environment (cluster/aws-gpu.yaml exports it).
    monkeypatch.setenv("THAWLINE_SNAPSHOT_STORE", "s3://thawline-snapshots-123456789012/snapshots")
    for spec in _llm_apps(yaml.safe_load((CONFIGS / name).read_text())):
        args = LLMAppArgs.model_validate(spec["args"])
        assert args.autoscaling.min_replicas == 0, "every shipped config scales to zero"
        built = app(spec["args"])
        # router.bind(server, args): the server deployment is the router's first init arg
        server = built._bound_deployment._replica_config.init_args[0]._bound_deployment
        assert server._replica_config.placement_group_strategy == "STRICT_PACK"
        assert len(server._replica_config.placement_group_bundles) == args.tensor_parallel_size
        assert server._deployment_config.autoscaling_config.min_replicas == 0


def test_local_cpu_paths_are_absolute_without_env(monkeypatch):
    """From a fresh clone: ${THAWLINE_DEMO_DIR:-/tmp/thawline-demo} gives absolute paths."""
    monkeypatch.delenv("THAWLINE_DEMO_DIR", raising=False)
    spec = _llm_apps(yaml.safe_load((CONFIGS / "local-cpu.yaml").read_text()))[0]
    a = LLMAppArgs.model_validate(spec["args"])
    assert a.model_source == "/tmp/thawline-demo/models/tiny"
    assert a.snapshot_store == "file:///tmp/thawline-demo/snapshots"
    monkeypatch.setenv("THAWLINE_DEMO_DIR", "/srv/demo")
    assert LLMAppArgs.model_validate(spec["args"]).model_source == "/srv/demo/models/tiny"


def test_gpu_configs_pin_accelerator_type_per_rank():
    for name, tp, acc in (("gpu-8b-tp1.yaml", 1, "L40S"), ("gpu-70b-tp4.yaml", 4, "H100")):
        spec = _llm_apps(yaml.safe_load((CONFIGS / name).read_text()))[0]
        a = LLMAppArgs.model_validate(spec["args"])
        assert a.tensor_parallel_size == tp and a.accelerator == "gpu"
        from serve_apps.llm.args import placement_bundles

        assert all(b["GPU"] == 1.0 and f"accelerator_type:{acc}" in b for b in placement_bundles(a))


def test_bad_args_fail_with_one_clear_line():
    from serve_apps.llm import app

    with pytest.raises(ValueError, match=r"args invalid: snapshot_uri: Extra inputs are not permitted"):
        app({"served_model_id": "x", "snapshot_uri": "file:///s/x/latest"})


@pytest.mark.parametrize("name", LLM_CONFIGS)
def test_llm_apps_set_the_autoscaler_push_intervals(name):
    """Without them Serve pushes load every 10 s and a request at zero waits that long."""
    from serve_apps.llm.args import metrics_env

    for spec in _llm_apps(yaml.safe_load((CONFIGS / name).read_text())):
        env = spec["runtime_env"]["env_vars"]
        for key in metrics_env(LLMAppArgs.model_validate(spec["args"])):
            assert float(env[key]) <= 1.0, f"{name}: {key}"


def test_aws_cluster_config_is_the_gateway_plus_the_per_model_examples(monkeypatch):
    """One deployable file for the whole cluster (`serve deploy` replaces every app): the gateway
    and each per-model example's app, verbatim; the gateway's serve providers name those apps."""
    from gateway.config import load_config

    doc = yaml.safe_load((CONFIGS / "aws-cluster.yaml").read_text())
    apps = {a["name"]: a for a in doc["applications"]}
    assert apps["gateway"]["import_path"] == "serve_apps.gateway:app"
    for example in ("gpu-8b-tp1.yaml", "gpu-70b-tp4.yaml"):
        (app_,) = yaml.safe_load((CONFIGS / example).read_text())["applications"]
        assert apps[app_["name"]] == app_, f"{example} and aws-cluster.yaml disagree"
        assert "${THAWLINE_SNAPSHOT_STORE}/" in app_["args"]["snapshot_url"]
    gw = load_config(CONFIGS / apps["gateway"]["args"]["config_path"])
    assert {p.app for p in gw.providers.values() if p.type == "serve"} == set(apps) - {"gateway"}
