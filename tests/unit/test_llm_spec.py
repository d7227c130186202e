"""EngineSpec: the replica -> engine host start contract (serve_apps/llm/spec.py)."""
from __future__ import annotations

import asyncio
import pickle

import pytest
from pydantic import ValidationError

from serve_apps.llm.spec import CaptureSpec, EngineSpec


class PlacementGroupLike:
    """Stands in for a Ray PlacementGroup (an arbitrary object the spec must pass through)."""

    def __init__(self, pg_id: str = "pg-1") -> None:
        self.id = pg_id

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacementGroupLike) and other.id == self.id


def test_a_spec_crosses_to_a_pooled_host_typed():
    """The replica hands its host the EngineSpec itself; to a warm-pool actor Ray pickles it, and
    the host gets an EngineSpec back, every field typed (no dict on the way)."""
    spec = EngineSpec(served_model_id="tiny", overrides={"dtype": "float32"}, snapshot_url="file:///s/tiny/1")
    back = pickle.loads(pickle.dumps(spec))
    assert type(back) is EngineSpec and back == spec
    assert back.snapshot_url == "file:///s/tiny/1" and back.capture is None and back.verify is False


def test_capture_and_gpu_fields_and_the_placement_group_object_survive_the_round_trip():
    pg = PlacementGroupLike()
    spec = EngineSpec(served_model_id="m", capture=CaptureSpec(source_dir="/m", tp=2, store_url="file:///s",
                                                              name="m", snapshot_id="firstboot-1"),
                      gpu_ids=[0, 1], placement_group=pg,
                      runtime_env={"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}, "working_dir": "gcs://_ray_pkg_x.zip"})
    assert spec.placement_group is pg  # kept as the object Ray handed the replica, not converted
    back = pickle.loads(pickle.dumps(spec))
    assert isinstance(back.capture, CaptureSpec) and back.capture.tp == 2 and back.capture.snapshot_id == "firstboot-1"
    assert isinstance(back.placement_group, PlacementGroupLike) and back.placement_group == pg
    assert back.gpu_ids == [0, 1] and back.runtime_env["env_vars"] == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}


def test_the_engine_host_takes_only_a_typed_spec():
    from serve_apps.llm.engine_host import EngineHost

    host = EngineHost.__new__(EngineHost)  # no vLLM import: start refuses before anything runs
    host._engine = None
    with pytest.raises(TypeError, match="EngineSpec"):
        asyncio.run(host.start({"served_model_id": "m", "snapshot_url": "file:///s/m/1"}))


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
