"""Which GPUs a GPU replica's engine host sees (serve_apps/llm/gpus.py): its rank bundles' devices."""
from __future__ import annotations

import pytest

from serve_apps.llm.args import LLMAppArgs, placement_bundles
from serve_apps.llm.gpus import rank_bundles, visible_devices


def test_rank_bundles_are_the_first_tp_bundles_with_a_gpu_as_vllm_picks_them():
    a = LLMAppArgs(served_model_id="m", snapshot_url="s3://b/m/latest", tensor_parallel_size=2, accelerator="gpu")
    assert rank_bundles(placement_bundles(a), 2) == [0, 1]
    # a CPU-only bundle (e.g. one holding only a side actor) is skipped, extra GPU bundles are unused
    assert rank_bundles([{"CPU": 1}, {"GPU": 1, "CPU": 1}, {"GPU": 1}, {"GPU": 1}], 2) == [1, 2]


def test_too_few_gpu_bundles_for_the_tp_degree_are_refused():
    cpu = LLMAppArgs(served_model_id="m", snapshot_url="s3://b/m/latest", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="0 bundles with a GPU, TP=2 needs 2"):
        rank_bundles(placement_bundles(cpu), 2)


def test_visible_devices_in_rank_order_whatever_ray_numbered_them():
    # Ray hands out any free devices: the replica's two ranks may hold GPUs 5 and 2
    assert visible_devices([[5], ["2"]]) == ["5", "2"]
    assert visible_devices([["GPU-8f1c"], ["GPU-0a3d"]]) == ["GPU-8f1c", "GPU-0a3d"]


@pytest.mark.parametrize("per_bundle,msg", [
    ([[0, 1], [2]], "rank 0 reported 2 devices"),
    ([[0], []], "rank 1 reported 0 devices"),
    ([[3], [3]], "device 3 reported by the bundles of two ranks"),
])
def test_a_probe_that_does_not_match_one_device_per_rank_is_refused(per_bundle, msg):
    with pytest.raises(ValueError, match=msg):
        visible_devices(per_bundle)
