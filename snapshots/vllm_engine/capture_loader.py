"""load_format="thawline_capture": HF loading, then each TP worker writes its rank (ThawlineCaptureLoader).

Registered by snapshots/vllm_engine/plugin.py; used by an engine that makes a snapshot
(snapshots/vllm_engine/capture.py). It loads the HF checkpoint with vLLM's default loader, then each
worker streams its parameters (fused and sharded exactly as vLLM holds them) straight into the
store. The capture happens between `load_weights` and `process_weights_after_loading` on
purpose: on CPU the latter repacks every linear weight into oneDNN handles and leaves empty
parameters behind, so the post-load state cannot be dumped later through collective_rpc. A
restore replays the same sequence (copy into parameters, then vLLM runs
process_weights_after_loading), so both paths agree.

Options come through `model_loader_extra_config` (options.CaptureOptions, extra keys rejected).
"""
from __future__ import annotations

import copy
import time

from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.logger import init_logger
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

from snapshots.vllm_engine.options import CaptureOptions
from snapshots.vllm_engine.parallel import parallel_position

# Under the "vllm." namespace so the lines go through vLLM's own log handler and format.
logger = init_logger("vllm.thawline.loader")


class ThawlineCaptureLoader(DefaultModelLoader):
    """Default (HF safetensors) loading, then each worker writes its own rank into the store."""

    def __init__(self, load_config: LoadConfig):
        self.capture = CaptureOptions.model_validate(dict(load_config.model_loader_extra_config or {}))
        # DefaultModelLoader rejects unknown extra-config keys, so it gets a copy without ours.
        super().__init__(_without_extra(load_config))

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        # The engine's `model` is the snapshot's engine dir (config + tokenizer only, a stable path
        # so compile-cache keys match at restore); the weights come from the HF checkpoint.
        source = copy.copy(model_config)
        object.__setattr__(source, "model", self.capture.hf_dir)
        object.__setattr__(source, "model_weights", "")
        super().load_weights(model, source)
        self._write_rank(model)

    def _write_rank(self, model: nn.Module) -> None:
        from snapshots.store import SnapshotStore  # lazy, as in loader.py: only workers write

        rank, _ = parallel_position()
        t0 = time.perf_counter()
        store = SnapshotStore(self.capture.store_url, self.capture.storage_options or None)
        writer = store.open_rank_writer(self.capture.model, self.capture.snapshot_id, rank)
        with writer:
            # named_parameters() de-duplicates tied weights, matching what a restore fills.
            for name, param in model.named_parameters():
                writer.add(name, param.data)
        logger.info("thawline: rank %d wrote %.1f MB in %.3f s", rank, writer.bytes_written / 1e6, time.perf_counter() - t0)


def _without_extra(load_config: LoadConfig) -> LoadConfig:
    # ...and a load format it knows: the HF checkpoints thawline snapshots are safetensors.
    clone = copy.copy(load_config)
    object.__setattr__(clone, "model_loader_extra_config", {})
    object.__setattr__(clone, "load_format", "safetensors")
    return clone
