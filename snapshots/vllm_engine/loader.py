"""load_format="thawline": a vLLM TP worker restores its own rank of a snapshot (ThawlineLoader).

Registered by snapshots/vllm_engine/plugin.py. Each TP worker restores exactly its own rank of the
snapshot (through the node-local cache tier) into the model vLLM just built, checks that the
snapshot fits (TP size, vLLM version, parameter names/shapes/dtypes), then all ranks agree over
the engine's own TP process group before the engine may serve. The worker resolves the snapshot
and reads its snapshot.json once (SnapshotStore.load) and hands that on to the cache and the
restore engine. A failure's one-line reason also goes to the starter (load_errors.py).

Options come through `model_loader_extra_config` (options.LoaderOptions, extra keys rejected).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import vllm
from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.logger import init_logger
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from snapshots.errors import SnapshotCorrupt
from snapshots.vllm_engine.engine_state import (
    SnapshotMismatch,
    agreement_failure,
    check_engine_version,
    check_parameters,
    check_tp_size,
    rank_digests,
    shard_digest,
)
from snapshots.vllm_engine.load_errors import report_load_error
from snapshots.vllm_engine.load_timing import RankLoad, record_rank_load
from snapshots.vllm_engine.options import LoaderOptions
from snapshots.vllm_engine.parallel import all_gather_tp, parallel_position

if TYPE_CHECKING:
    from snapshots.store import ResolvedSnapshot, SnapshotStore

# Under the "vllm." namespace so the lines go through vLLM's own log handler and format.
logger = init_logger("vllm.thawline.loader")


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


class ThawlineLoader(BaseModelLoader):
    def __init__(self, load_config: LoadConfig):
        super().__init__(load_config)
        self.options = LoaderOptions.model_validate(dict(load_config.model_loader_extra_config or {}))

    def download_model(self, model_config: ModelConfig) -> None:
        # Nothing to download ahead: restore() fetches exactly this rank's files when it runs.
        return None

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        t0 = time.perf_counter()
        rank, tp = parallel_position()
        url = self.options.rank_urls.get(rank, self.options.snapshot_url)
        local_error: BaseException | None = None
        contribution: dict = {"snapshot": None, "digest": "", "expected": [], "error": None}
        stats: dict = {}
        try:
            contribution, stats = self._restore_into(model, url, rank, tp)
        except Exception as exc:  # reported to every rank below, then re-raised as is
            local_error = exc
            contribution["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Every rank reaches this all-gather, even a failed one: otherwise a rank that raised early
        # would leave the others blocked in the collective until the (30 min) gloo/NCCL timeout.
        gathered = all_gather_tp(contribution)
        failed = [(r, c["error"]) for r, c in enumerate(gathered) if c.get("error")]
        if local_error is not None:
            report_load_error(str(local_error))
            raise local_error
        if failed:
            r, reason = failed[0]
            message = f"TP rank {r} failed to restore: {reason}"
            report_load_error(message)
            raise SnapshotMismatch(message)
        verdict = agreement_failure(gathered)
        if verdict:
            report_load_error(verdict)
            raise SnapshotMismatch(verdict)
        # the whole weight phase (restore, copy, agreement), as an event the starter reads
        # (load_timing.py); the log line is for people
        load = RankLoad(rank=rank, snapshot=gathered[0]["snapshot"], weights_s=round(time.perf_counter() - t0, 4),
                        **stats)
        record_rank_load(load)
        logger.info("thawline: rank %d loaded weights in %.3f s; TP ranks agree on snapshot %s",
                    rank, load.weights_s, load.snapshot)

    def _restore_into(self, model: nn.Module, url: str, rank: int, tp: int) -> tuple[dict, dict]:
        """(this rank's contribution to the TP agreement, its RankLoad timing fields)."""
        # The restore stack (pyarrow, fsspec) is imported here, not at module top: the plugin
        # imports this module in every process vLLM starts, and only TP workers restore.
        from snapshots.store import SnapshotStore

        store, ref = SnapshotStore.for_snapshot(url)
        snap = store.load(ref)  # the one read of snapshot.json in this worker
        meta, where = snap.meta, snap.url
        # Cheap checks first: fail before reading a single weight byte.
        check_tp_size(meta.tp_size, tp, where=where)
        check_engine_version(meta.engine.version, vllm.__version__, allow_mismatch=self.options.allow_version_mismatch, where=where)

        t0 = time.perf_counter()
        params = dict(model.named_parameters())
        expected = {n: (tuple(p.shape), _dtype_name(p)) for n, p in params.items()}
        rows = store.read_manifest(snap.ref)
        local = self._local_snapshot(store, snap, rank)
        if local is not None and all(p.device.type == "cpu" and p.data.is_contiguous() for p in params.values()):
            nbytes, how = self._map_into(params, expected, store, snap, rows, rank, local)
        else:
            nbytes, how = self._copy_into(params, expected, store, snap, rank)
        # peak_device_mib: the device's allocation high-water mark so far (weights + any staging);
        # bench/gpu_check.py compares it with the rank's weight bytes.
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
        restore_s = time.perf_counter() - t0
        logger.info("thawline: rank %d restored %.1f MB from %s in %.3f s (%s, verify=%s, peak_device_mib=%.1f)",
                    rank, nbytes / 1e6, where, restore_s, how, self.options.verify, peak)
        mine = [(r.name, r.checksum) for r in rows if r.rank == rank]
        return {
            "snapshot": f"{snap.ref.model}/{snap.ref.snapshot_id}",
            "digest": shard_digest(mine),
            "expected": rank_digests(rows, meta.tp_size),
            "error": None,
        }, {"restore_s": round(restore_s, 4), "nbytes": int(nbytes), "how": how, "peak_device_mib": round(peak, 1)}

    def _map_into(self, params: dict[str, nn.Parameter], expected: dict, store: SnapshotStore,
                  snap: ResolvedSnapshot, rows: list, rank: int, local: str) -> tuple[int, str]:
        """Host-resident parameters (CPU engines): the parameters become views of private
        mappings of the local (or node-cached) part files. No copy and no fresh memory to fault
        in: restore()+copy_ touched every byte twice, and even one preadv copy into vLLM's fresh
        parameters cost 3x the mapping + checksum pass in bench/engine_start.py.
        Returns (bytes restored, how)."""
        from snapshots.cache import SnapshotCache
        from snapshots.maprank import map_rank

        where = snap.url
        mine_rows = [r for r in rows if r.rank == rank]
        check_parameters(expected, {r.name: (tuple(r.shape), r.dtype) for r in mine_rows}, rank=rank, where=where)
        try:
            mapped = map_rank(local, mine_rows, rank=rank, verify=self.options.verify)
        except SnapshotCorrupt:
            if store.is_local:
                raise
            # The node-cache copy went bad after it was marked complete: fetch it again once.
            logger.warning("thawline: cached copy of rank %d of %s is corrupt; fetching it again", rank, where)
            SnapshotCache().discard(snap.url, [rank])
            local = self._local_snapshot(store, snap, rank)
            mapped = map_rank(local, mine_rows, rank=rank, verify=self.options.verify)
        with torch.no_grad():
            for name, tensor in mapped.items():
                params[name].data = tensor
        return sum(r.nbytes for r in mine_rows), "mapped from the part files"

    def _copy_into(self, params: dict[str, nn.Parameter], expected: dict, store: SnapshotStore,
                   snap: ResolvedSnapshot, rank: int) -> tuple[int, str]:
        """Device parameters: the restore engine reads the rank into a host buffer (pinned when
        CUDA is present), then the bytes go into vLLM's parameters in chunks of at most
        THAWLINE_STAGING_BYTES (hostbuf.copy_into_params): the device never holds a second copy
        of the rank, so peak device memory during restore is the weights themselves.
        Returns (bytes restored, how)."""
        from snapshots.hostbuf import copy_into_params
        from snapshots.restore import restore_resolved

        restored = restore_resolved(store, snap, rank, verify=self.options.verify, use_cache=self.options.use_cache,
                                    device=None)
        check_parameters(expected, {n: (tuple(t.shape), _dtype_name(t)) for n, t in restored.tensors.items()},
                         rank=rank, where=snap.url)
        with torch.no_grad():
            # copy, not assignment: on CPU process_weights_after_loading repacks and drops
            # most parameters, and views would pin the whole restore buffer.
            chunk = copy_into_params(restored.tensors, params)
        return restored.timings.tensor_bytes, f"restore engine, staged in chunks of <= {chunk / 2**20:.0f} MiB"

    def _local_snapshot(self, store: SnapshotStore, snap: ResolvedSnapshot, rank: int) -> str | None:
        """Local directory holding this rank's part files: the snapshot itself on file://, else the
        node-local cache copy (fetched once per node). None when the cache is turned off."""
        if store.is_local:
            return snap.ref.path
        if not self.options.use_cache:
            return None
        from snapshots.cache import SnapshotCache

        return str(SnapshotCache().fetch_resolved(store, snap, ranks=[rank]).path)
