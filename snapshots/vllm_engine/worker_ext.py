"""Worker extension (`worker_extension_cls`): code every vLLM TP worker runs via collective_rpc.

vLLM mixes this class into its Worker, so `self` is the worker; methods are prefixed `thawline_`
to stay clear of vLLM's own names.
"""
from __future__ import annotations

import socket

WORKER_EXTENSION = "snapshots.vllm_engine.worker_ext.ThawlineWorkerExtension"


class ThawlineWorkerExtension:
    def thawline_engine_info(self) -> dict:
        """This rank's placement and the KV-cache size the engine settled on (after profiling)."""
        import torch.distributed as dist
        from vllm.distributed import get_tp_group

        cache = self.vllm_config.cache_config  # type: ignore[attr-defined]
        parallel = self.vllm_config.parallel_config  # type: ignore[attr-defined]
        group = get_tp_group()
        return {
            "rank": int(self.rank),  # type: ignore[attr-defined]
            "local_rank": int(self.local_rank),  # type: ignore[attr-defined]
            "device": str(getattr(self, "device", "cpu")),
            "hostname": socket.gethostname(),
            "backend": str(dist.get_backend(group.device_group)),
            "executor": str(parallel.distributed_executor_backend or "uni"),
            "num_gpu_blocks": int(cache.num_gpu_blocks or 0),
            "block_size": int(cache.block_size),
            "kv_cache_memory_bytes": cache.kv_cache_memory_bytes,
        }
