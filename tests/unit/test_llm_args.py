"""serve_apps.llm args schema, deployment options, timeline and readiness board: pure logic."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gateway.readiness import Board
from serve_apps.llm.args import (
    LLMAppArgs,
    effective_engine_overrides,
    expand_env,
    first_boot_ref,
    metrics_env,
    placement_bundles,
    server_deployment_options,
)
from serve_apps.llm.timeline import log_line, phases

SNAP = "file:///data/snapshots/tiny/latest"


def test_scale_to_zero_is_the_default_and_options_carry_it():
    a = LLMAppArgs(served_model_id="tiny", snapshot_url=SNAP)
    opts = server_deployment_options(a)
    assert opts["autoscaling_config"]["min_replicas"] == 0
    assert opts["autoscaling_config"]["initial_replicas"] == 0
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    assert opts["placement_group_bundles"] == [{"CPU": 1.0}]
    # no runtime_env in code: Serve would drop the app's env_vars for the deployment
    assert "runtime_env" not in opts["ray_actor_options"]
    assert metrics_env(a)["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] == "0.25"


def test_unknown_keys_are_rejected_with_their_name():
    with pytest.raises(ValidationError, match="snapshot_uri"):
        LLMAppArgs(served_model_id="tiny", snapshot_uri=SNAP)
    with pytest.raises(ValidationError, match="min_replica"):
        LLMAppArgs(served_model_id="tiny", snapshot_url=SNAP, autoscaling={"min_replica": 1})


@pytest.mark.parametrize("kw, msg", [
    ({}, "give snapshot_url, or both"),
    ({"model_source": "/m"}, "give snapshot_url, or both"),
    ({"snapshot_url": SNAP, "model_source": "/m", "snapshot_store": "file:///s"}, "not both"),
    ({"snapshot_url": "snapshots/tiny/latest"}, "relative path"),
    ({"snapshot_url": SNAP, "accelerator_type": "H100"}, "accelerator: gpu only"),
    ({"snapshot_url": SNAP, "autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas"),
])
def test_invalid_combinations(kw, msg):
    with pytest.raises(ValidationError, match=msg):
        LLMAppArgs(served_model_id="tiny", **kw)


def test_gpu_bundles_one_per_rank_with_accelerator_type():
    a = LLMAppArgs(served_model_id="m", snapshot_url="s3://b/m/latest", tensor_parallel_size=4,
                   accelerator="gpu", accelerator_type="H100", cpus_per_rank=2)
    b = placement_bundles(a)
    assert b == [{"CPU": 2.0, "GPU": 1.0, "accelerator_type:H100": 0.001}] * 4
    # the replica actor in bundle 0 takes no GPU: vLLM's workers take one per bundle
    assert server_deployment_options(a)["ray_actor_options"]["num_cpus"] == 0.0
    # TP>1 keeps its warm pool: one pooled host runs the whole TP group
    assert a.warm_pool_size == 1
    assert LLMAppArgs(served_model_id="m", snapshot_url="s3://b/m/latest", tensor_parallel_size=2,
                      warm_pool_size=3).warm_pool_size == 3


def test_env_expansion_with_defaults_and_errors():
    env = {"DEMO": "/tmp/d"}
    assert expand_env("${DEMO}/model", env) == "/tmp/d/model"
    assert expand_env("${NOPE:-/tmp/x}/s", env) == "/tmp/x/s"
    with pytest.raises(ValueError, match="NOPE is not set"):
        expand_env("${NOPE}/s", env)


def test_args_expand_env_from_the_environment(monkeypatch):
    monkeypatch.setenv("THAWLINE_DEMO_DIR", "/tmp/demo-x")
    a = LLMAppArgs(served_model_id="tiny", model_source="${THAWLINE_DEMO_DIR}/models/tiny",
                   snapshot_store="file://${THAWLINE_DEMO_DIR}/snapshots")
    assert a.model_source == "/tmp/demo-x/models/tiny"
    assert a.snapshot_store == "file:///tmp/demo-x/snapshots"
    assert a.first_boot


def test_first_boot_ref_is_deterministic_per_source_tp_and_engine():
    kw = dict(served_model_id="org/Model 8B", model_source="/m", snapshot_store="file:///s")
    name, sid = first_boot_ref(LLMAppArgs(**kw), "e1")
    assert name == "org-Model-8B" and sid.startswith("firstboot-") and sid.endswith("-e1")
    assert first_boot_ref(LLMAppArgs(**kw), "e1") == (name, sid)
    assert first_boot_ref(LLMAppArgs(**kw, tensor_parallel_size=2), "e1")[1] != sid
    assert first_boot_ref(LLMAppArgs(**{**kw, "model_source": "/other"}), "e1")[1] != sid
    # another engine identity (vLLM version, overrides, accelerator): another id, same prefix
    other = first_boot_ref(LLMAppArgs(**kw), "e2")[1]
    assert other != sid and other.rsplit("-", 1)[0] == sid.rsplit("-", 1)[0]
    with pytest.raises(ValueError, match="engine_id"):
        first_boot_ref(LLMAppArgs(**kw), "../x")


def test_on_engine_mismatch_defaults_to_recapture():
    kw = dict(served_model_id="m", model_source="/m", snapshot_store="file:///s")
    assert LLMAppArgs(**kw).on_engine_mismatch == "recapture"
    assert LLMAppArgs(**kw, on_engine_mismatch="refuse").on_engine_mismatch == "refuse"
    with pytest.raises(ValidationError):
        LLMAppArgs(**kw, on_engine_mismatch="ignore")


def test_timeline_phases_and_log_line():
    marks = {"request": 100.0, "process_start": 100.5, "init_start": 101.0, "imports_done": 101.25,
             "engine_prepared": 101.5, "engine_ready": 103.0, "first_token": 103.5}
    ph = phases(marks)
    assert ph == {"serve_scheduling": 0.5, "worker_start": 0.5, "imports": 0.25, "engine_prepare": 0.25,
                  "engine_start_with_weights": 1.5, "first_token": 0.5, "total": 3.5}
    line = json.loads(log_line("tiny", "r1", marks, host="warm_pool"))
    assert line["event"] == "thawline.cold_start" and line["phases_s"]["total"] == 3.5
    # a replica already starting before the request: early phases clamp to 0, total stays true
    early = {**marks, "process_start": 90.0, "request": 100.0}
    assert phases(early)["serve_scheduling"] == 0.0


def test_readiness_board_states_and_replica_seconds():
    now = [0.0]
    b = Board(clock=lambda: now[0])
    assert b.get("tiny") == {"state": "cold", "warm_replicas": 0, "replica_seconds": 0.0, "parked": 0, "tier": "cold"}
    b.report("tiny", "r1", "starting")
    now[0] = 2.0
    assert b.get("tiny")["state"] == "warming"
    b.report("tiny", "r1", "warm")
    now[0] = 5.0
    assert b.get("tiny") == {"state": "warm", "warm_replicas": 1, "replica_seconds": 5.0, "parked": 0, "tier": "warm"}
    b.report("tiny", "r1", "stopped")
    now[0] = 100.0
    assert b.get("tiny") == {"state": "cold", "warm_replicas": 0, "replica_seconds": 5.0, "parked": 0, "tier": "cold"}
    with pytest.raises(ValueError, match="state must be one of"):
        b.report("tiny", "r1", "hot")


def test_executor_backend_never_ray_on_cpu_and_user_choice_wins():
    cpu2 = LLMAppArgs(served_model_id="t", snapshot_url=SNAP, tensor_parallel_size=2,
                      engine_overrides={"max_model_len": 256})
    assert effective_engine_overrides(cpu2) == {"distributed_executor_backend": "mp", "max_model_len": 256}
    assert "distributed_executor_backend" not in effective_engine_overrides(LLMAppArgs(served_model_id="t", snapshot_url=SNAP))
    gpu = LLMAppArgs(served_model_id="t", snapshot_url=SNAP, accelerator="gpu",
                     engine_overrides={"distributed_executor_backend": "mp"})
    assert effective_engine_overrides(gpu)["distributed_executor_backend"] == "mp"


@pytest.mark.parametrize("bad", ["tiny\n", "", " tiny", "tiny ", "a\tb", "x" * 200, "-lead"])
def test_served_model_id_must_be_a_whole_model_id(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="model id"):
        LLMAppArgs(served_model_id=bad, snapshot_url="file:///tmp/s/tiny/latest")
    LLMAppArgs(served_model_id="meta-llama/Llama-3.1-8B-Instruct", snapshot_url="file:///tmp/s/tiny/latest")


def test_resources_per_rank_ride_in_every_bundle():
    # e.g. a resource only the engine node type offers: replicas never land on the head
    a = LLMAppArgs(served_model_id="m", snapshot_url="s3://b/m/latest", tensor_parallel_size=2,
                   resources_per_rank={"thawline_engine": 1})
    assert placement_bundles(a) == [{"CPU": 1.0, "thawline_engine": 1.0}] * 2
    assert server_deployment_options(a)["placement_group_bundles"] == placement_bundles(a)
    g = LLMAppArgs(served_model_id="m", snapshot_url="s3://b/m/latest", accelerator="gpu",
                   accelerator_type="L4", resources_per_rank={"pool_a": 0.5})
    assert placement_bundles(g) == [{"CPU": 1.0, "GPU": 1.0, "accelerator_type:L4": 0.001, "pool_a": 0.5}]
    assert placement_bundles(LLMAppArgs(served_model_id="m", snapshot_url="s3://b/m/latest")) == [{"CPU": 1.0}]


@pytest.mark.parametrize("res, msg", [
    ({"CPU": 1}, "not a custom resource"),
    ({"accelerator_type:H100": 1}, "not a custom resource"),
    ({"thawline_engine": 0}, "must be > 0"),
])
def test_resources_per_rank_rejects_builtin_and_empty_amounts(res, msg):
    with pytest.raises(ValidationError, match=msg):
        LLMAppArgs(served_model_id="m", snapshot_url="s3://b/m/latest", resources_per_rank=res)
