"""EngineSpec: the replica -> engine host start contract (serve_apps/llm/spec.py)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_apps.llm.spec import CaptureSpec, EngineSpec


class PlacementGroupLike:
    """Stands in for a Ray PlacementGroup (an arbitrary object the spec must pass through)."""


def test_a_snapshot_spec_dumps_to_the_dict_engine_host_reads():
    d = EngineSpec(served_model_id="tiny", overrides={"dtype": "float32"}, snapshot_url="file:///s/tiny/1").model_dump()
    assert d == {"served_model_id": "tiny", "overrides": {"dtype": "float32"}, "verify": False,
                 "snapshot_url": "file:///s/tiny/1", "capture": None, "accelerator": None, "gpu_ids": None,
                 "placement_group": None, "runtime_env": None}


def test_capture_and_gpu_fields_and_the_placement_group_object_survive_the_round_trip():
    pg = PlacementGroupLike()
    spec = EngineSpec(served_model_id="m", capture=CaptureSpec(source_dir="/m", tp=2, store_url="file:///s",
                                                              name="m", snapshot_id="firstboot-1"),
                      gpu_ids=[0, 1], placement_group=pg,
                      runtime_env={"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}, "working_dir": "gcs://_ray_pkg_x.zip"})
    d = spec.model_dump()
    assert d["capture"] == {"source_dir": "/m", "tp": 2, "store_url": "file:///s", "name": "m",
                            "snapshot_id": "firstboot-1"}
    assert d["placement_group"] is pg and d["gpu_ids"] == [0, 1]
    assert d["runtime_env"]["env_vars"] == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    again = EngineSpec.model_validate(d).model_dump()             # what EngineHost.start does
    assert again["placement_group"] is pg and again == d


@pytest.mark.parametrize("kw", [{}, {"snapshot_url": "file:///s/m/1",
                                     "capture": {"source_dir": "/m", "tp": 1, "store_url": "file:///s",
                                                 "name": "m", "snapshot_id": "x"}}])
def test_exactly_one_of_snapshot_url_or_capture(kw):
    with pytest.raises(ValueError, match="snapshot_url or capture"):
        EngineSpec(served_model_id="m", **kw)


def test_unknown_keys_and_bad_capture_are_refused():
    with pytest.raises(ValidationError):
        EngineSpec.model_validate({"served_model_id": "m", "snapshot_url": "u", "snapshot": "typo"})
    with pytest.raises(ValidationError):
        CaptureSpec(source_dir="/m", tp=0, store_url="s", name="m", snapshot_id="x")
