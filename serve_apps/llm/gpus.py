"""Which GPUs a GPU replica's engine may see: exactly the devices of its placement-group bundles.

A GPU replica reserves one bundle per TP rank ({"GPU": 1, "CPU": ...}, args.placement_bundles);
the replica actor sits in bundle 0 holding no GPU, and vLLM's Ray executor places rank r's
worker in the r-th bundle that has a GPU (vllm/v1/executor/ray_executor.py, _init_workers_ray),
where Ray hands the worker that bundle's device. The engine host (a warm-pool actor, or the
replica's own process) holds no GPU either, and Ray leaves an actor without GPUs every device of
the node visible. So the host is narrowed to the bundles' devices (CUDA_VISIBLE_DEVICES, rank
order): what the host and its EngineCore do on a device (vLLM reads the device's capability
through it while building the config) then touches only this replica's GPUs, never a neighbour's.

Pure (no Ray): the probe that asks each bundle for its device is server.bundle_gpu_ids.
"""
from __future__ import annotations


def rank_bundles(bundle_specs: list[dict[str, float]], world_size: int, device_key: str = "GPU") -> list[int]:
    """Indices of the bundles vLLM's Ray executor places ranks 0..world_size-1 in: the first
    `world_size` bundles that hold a device, as vLLM picks them."""
    with_device = [i for i, b in enumerate(bundle_specs) if b.get(device_key, 0) > 0]
    if len(with_device) < world_size:
        raise ValueError(f"placement group has {len(with_device)} bundles with a {device_key}, "
                         f"TP={world_size} needs {world_size}: {bundle_specs}")
    return with_device[:world_size]


def visible_devices(per_bundle: list[list[int | str]]) -> list[str]:
    """The CUDA_VISIBLE_DEVICES entries for the host, in rank order, from the device ids Ray gave
    a probe in each rank's bundle. Each bundle holds one device and no two bundles share one;
    anything else means the probe did not see what the ranks will get, so it is refused."""
    out: list[str] = []
    for rank, ids in enumerate(per_bundle):
        if len(ids) != 1:
            raise ValueError(f"bundle of rank {rank} reported {len(ids)} devices ({ids}); a rank bundle holds one")
        dev = str(ids[0])
        if dev in out:
            raise ValueError(f"device {dev} reported by the bundles of two ranks: {per_bundle}")
        out.append(dev)
    return out
