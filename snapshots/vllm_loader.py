"""vLLM model loaders of Thawline, registered by snapshots/vllm_plugin.py.

`load_format="thawline"` (ThawlineLoader): each TP worker restores exactly its own rank of a
snapshot (through the node-local cache tier) into the model vLLM just built, checks that the
snapshot fits (TP size, vLLM version, parameter names/shapes/dtypes), then all ranks agree over
the engine's own TP process group before the engine may serve.

`load_format="thawline_capture"` (ThawlineCaptureLoader): used once by create_engine_snapshot.
It loads the HF checkpoint with vLLM's default loader, then each worker streams its parameters
(fused and sharded exactly as vLLM holds them) straight into the store. The capture happens
between `load_weights` and `process_weights_after_loading` on purpose: on CPU the latter repacks
every linear weight into oneDNN handles and leaves empty parameters behind, so the post-load
state cannot be dumped later through collective_rpc. A restore replays the same sequence
(copy into parameters, then vLLM runs process_weights_after_loading), so both paths agree.

Options come through `model_loader_extra_config` (validated, extra keys rejected).
"""
from __future__ import annotations

import copy
import os
import time

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.logger import init_logger
from vllm.model_executor.model_loader.base_loader import BaseModelLoader
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

from snapshots.engine_state import (
    SnapshotMismatch,
    agreement_failure,
    check_engine_version,
    check_parameters,
    check_tp_size,
    rank_digests,
    shard_digest,
)
from snapshots.errors import SnapshotCorrupt

# Under the "vllm." namespace so the lines go through vLLM's own log handler and format.
logger = init_logger("vllm.thawline.loader")

# start_engine points this at a file; a failing worker writes its one-line reason there so the
# caller can raise it (vLLM itself only reports "Engine core initialization failed").
ERROR_FILE_ENV = "THAWLINE_LOAD_ERROR_FILE"


class LoaderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    snapshot_url: str = Field(description="Full snapshot URL <store>/<model>/<id|latest>.")
    verify: bool = Field(default=True, description="Re-hash every tensor of the rank against the manifest.")
    allow_version_mismatch: bool = Field(default=False, description="Load a snapshot made by another vLLM version.")
    use_cache: bool = Field(default=True, description="Read remote snapshots through the node-local cache.")
    rank_urls: dict[int, str] = Field(
        default_factory=dict,
        description="Per-rank snapshot URL overrides (tests and debugging; the agreement check rejects mixes).",
    )


class CaptureOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store_url: str = Field(description="Store URL the snapshot is written to.")
    model: str = Field(description="Model name in the store.")
    snapshot_id: str = Field(description="Id claimed by the coordinator (create_writer).")
    hf_dir: str = Field(description="HF checkpoint directory to read the weights from.")
    storage_options: dict = Field(default_factory=dict, description="fsspec storage options.")


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _parallel_position() -> tuple[int, int]:
    from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    if get_pp_group().world_size != 1:
        raise SnapshotMismatch("thawline snapshots support pipeline_parallel_size=1 only")
    return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()


def _report_error(message: str) -> None:
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    try:
        # O_EXCL: the first failing rank's reason wins; the others' are consequences.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(message.splitlines()[0] if message else "unknown error")


class ThawlineLoader(BaseModelLoader):
    def __init__(self, load_config: LoadConfig):
        super().__init__(load_config)
        self.options = LoaderOptions.model_validate(dict(load_config.model_loader_extra_config or {}))

    def download_model(self, model_config: ModelConfig) -> None:
        # Nothing to download ahead: restore() fetches exactly this rank's files when it runs.
        return None

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        t0 = time.perf_counter()
        rank, tp = _parallel_position()
        url = self.options.rank_urls.get(rank, self.options.snapshot_url)
        local_error: BaseException | None = None
        contribution: dict = {"snapshot": None, "digest": "", "expected": [], "error": None}
        try:
            contribution = self._restore_into(model, url, rank, tp)
        except Exception as exc:  # reported to every rank below, then re-raised as is
            local_error = exc
            contribution["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Every rank reaches this all-gather, even a failed one: otherwise a rank that raised early
        # would leave the others blocked in the collective until the (30 min) gloo/NCCL timeout.
        gathered = _all_gather_tp(contribution)
        failed = [(r, c["error"]) for r, c in enumerate(gathered) if c.get("error")]
        if local_error is not None:
            _report_error(str(local_error))
            raise local_error
        if failed:
            r, reason = failed[0]
            message = f"TP rank {r} failed to restore: {reason}"
            _report_error(message)
            raise SnapshotMismatch(message)
        verdict = agreement_failure(gathered)
        if verdict:
            _report_error(verdict)
            raise SnapshotMismatch(verdict)
        # bench/engine_start.py parses this line: the whole weight phase (restore, copy, agreement).
        logger.info("thawline: rank %d loaded weights in %.3f s; TP ranks agree on snapshot %s",
                    rank, time.perf_counter() - t0, gathered[0]["snapshot"])

    def _restore_into(self, model: nn.Module, url: str, rank: int, tp: int) -> dict:
        import vllm

        from snapshots.maprank import map_rank
        from snapshots.restore import restore
        from snapshots.store import SnapshotStore

        store, ref = SnapshotStore.for_snapshot(url)
        resolved = store.resolve(ref)
        meta = store.inspect(resolved)
        where = resolved.url
        # Cheap checks first: fail before reading a single weight byte.
        check_tp_size(meta.tp_size, tp, where=where)
        check_engine_version(meta.engine.version, vllm.__version__, allow_mismatch=self.options.allow_version_mismatch, where=where)

        t0 = time.perf_counter()
        params = dict(model.named_parameters())
        expected = {n: (tuple(p.shape), _dtype_name(p)) for n, p in params.items()}
        rows = store.read_manifest(resolved)
        local = self._local_snapshot(store, resolved, rank)
        if local is not None and all(p.device.type == "cpu" and p.data.is_contiguous() for p in params.values()):
            # Host-resident parameters (CPU engines): the parameters become views of private
            # mappings of the local (or node-cached) part files. No copy and no fresh memory to
            # fault in: restore()+copy_ touched every byte twice, and even one preadv copy into
            # vLLM's fresh parameters cost 3x the mapping + checksum pass in bench/engine_start.py.
            mine_rows = [r for r in rows if r.rank == rank]
            check_parameters(expected, {r.name: (tuple(r.shape), r.dtype) for r in mine_rows}, rank=rank, where=where)
            try:
                mapped = map_rank(local, mine_rows, rank=rank, verify=self.options.verify)
            except SnapshotCorrupt:
                if store.is_local:
                    raise
                # The node-cache copy went bad after it was marked complete: fetch it again once.
                from snapshots.cache import SnapshotCache

                logger.warning("thawline: cached copy of rank %d of %s is corrupt; fetching it again", rank, where)
                SnapshotCache().discard(resolved.url, [rank])
                local = self._local_snapshot(store, resolved, rank)
                mapped = map_rank(local, mine_rows, rank=rank, verify=self.options.verify)
            with torch.no_grad():
                for name, tensor in mapped.items():
                    params[name].data = tensor
            nbytes = sum(r.nbytes for r in mine_rows)
            how = "mapped from the part files"
        else:
            # Device parameters: the restore engine (pinned host buffer, one H2D copy per rank).
            device = next(iter(params.values())).device
            restored = restore(resolved.url, rank, verify=self.options.verify, use_cache=self.options.use_cache,
                               device=None if device.type == "cpu" else str(device))
            check_parameters(expected, {n: (tuple(t.shape), _dtype_name(t)) for n, t in restored.tensors.items()},
                             rank=rank, where=where)
            with torch.no_grad():
                for name, tensor in restored.tensors.items():
                    # copy_, not assignment: on CPU process_weights_after_loading repacks and drops
                    # most parameters, and views would pin the whole restore buffer.
                    params[name].data.copy_(tensor, non_blocking=True)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            nbytes = restored.timings.tensor_bytes
            how = "restore engine"
        logger.info("thawline: rank %d restored %.1f MB from %s in %.3f s (%s, verify=%s)",
                    rank, nbytes / 1e6, where, time.perf_counter() - t0, how, self.options.verify)
        mine = [(r.name, r.checksum) for r in rows if r.rank == rank]
        return {
            "snapshot": f"{resolved.model}/{resolved.snapshot_id}",
            "digest": shard_digest(mine),
            "expected": rank_digests(rows, meta.tp_size),
            "error": None,
        }


    def _local_snapshot(self, store, resolved, rank: int) -> str | None:
        """Local directory holding this rank's part files: the snapshot itself on file://, else the
        node-local cache copy (fetched once per node). None when the cache is turned off."""
        if store.is_local:
            return resolved.path
        if not self.options.use_cache:
            return None
        from snapshots.cache import SnapshotCache

        return str(SnapshotCache().fetch(resolved.url, ranks=[rank]).path)


def _all_gather_tp(obj: dict) -> list[dict]:
    """All-gather a small dict over the engine's TP group (its gloo CPU group, on CPU and CUDA alike)."""
    import torch.distributed as dist
    from vllm.distributed import get_tp_group

    group = get_tp_group()
    if group.world_size == 1:
        return [obj]
    out: list = [None] * group.world_size
    dist.all_gather_object(out, obj, group=group.cpu_group)
    return out


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
        from snapshots.store import SnapshotStore

        rank, _ = _parallel_position()
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
