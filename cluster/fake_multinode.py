"""`cluster/fake-multinode.yaml` pointed at a running head: the autoscaler config that
`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...` runs with on one machine, where
Ray's fake multi-node provider "launches" each worker node as an extra raylet.

The config is validated here, by Ray's own prepare step, so a bad node type fails before any
process starts rather than inside the autoscaler monitor.
"""
from __future__ import annotations

from pathlib import Path

from cluster.config import deep_merge, load_cluster_config
from cluster.validate import ray_prepare_and_validate

FAKE_CONFIG = Path(__file__).with_name("fake-multinode.yaml")
# Ray's fake provider plus each node's zygote started before its raylet (imported by the autoscaler
# monitor, by path: importing it here would import Ray's autoscaler into every caller)
PROVIDER_MODULE = "cluster.fake_multinode_provider.PreloadingFakeProvider"
ENGINE_RESOURCE = "thawline_engine"  # what fake-multinode.yaml's cpu-engine type offers


def fake_multinode_config(gcs_port: int, head_cpus: int, head_resources: dict[str, float],
                          node_types: dict | None = None, preload: bool = False) -> dict:
    """The validated autoscaler config for a head on 127.0.0.1:`gcs_port`. `node_types`: worker
    node types added to (or merged over) fake-multinode.yaml's, in its `available_node_types`
    shape. `preload`: each worker node starts its node zygote before it registers, as the real
    configs' start commands do (cluster/fake_multinode_provider.py)."""
    provider = {"gcs_address": f"127.0.0.1:{gcs_port}"}
    if preload:
        provider.update(type="external", module=PROVIDER_MODULE)
    config = deep_merge(load_cluster_config(FAKE_CONFIG), {
        "provider": provider,
        # The autoscaler cannot configure the head: its type must say what `ray start` gives it.
        "available_node_types": {"ray.head.default": {"resources": {"CPU": head_cpus, "GPU": 0, **head_resources}},
                                 **(node_types or {})},
    })
    ray_prepare_and_validate(config)
    return config
