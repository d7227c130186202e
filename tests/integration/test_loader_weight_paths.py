"""The vLLM loader's two weight paths put the snapshot's bytes into the parameters.

`ThawlineLoader._map_into` (host-resident parameters become views of the mapped part files) and
`_copy_into` (the restore engine's buffer copied into the parameters in staged chunks: the path
GPU parameters take). A CPU engine always takes the first, so the e2e tier never runs the second
on this machine; here both run against the same real file:// snapshot of the generated tiny
Llama, with plain CPU parameters, and are compared with restore() byte for byte.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from vllm.config.load import LoadConfig  # noqa: E402

from snapshots.restore import restore  # noqa: E402
from snapshots.store import SnapshotStore  # noqa: E402
from snapshots.vllm_engine.engine_state import SnapshotMismatch  # noqa: E402
from snapshots.vllm_engine.loader import ThawlineLoader  # noqa: E402
from tests.integration.test_snapshot_store import _snap, tiny_dir  # noqa: E402,F401  (fixture)

pytestmark = pytest.mark.integration


def _zeros(rows, like: dict) -> dict[str, torch.nn.Parameter]:
    return {r.name: torch.nn.Parameter(torch.zeros(tuple(r.shape), dtype=like[r.name].dtype), requires_grad=False)
            for r in rows}


def test_mapped_and_copied_parameters_hold_the_snapshot_bytes(tmp_path, tiny_dir):  # noqa: F811
    url = _snap(f"file://{tmp_path}/store", tiny_dir, tp=2)
    store, ref = SnapshotStore.for_snapshot(url)
    snap = store.load(ref)
    rows = store.read_manifest(snap.ref)
    loader = ThawlineLoader(LoadConfig(load_format="thawline", model_loader_extra_config={"snapshot_url": url}))
    for rank in (0, 1):
        restored = restore(url, rank, verify=True).tensors
        mine = [r for r in rows if r.rank == rank]
        expected = {r.name: (tuple(r.shape), r.dtype) for r in mine}
        mapped, copied = _zeros(mine, restored), _zeros(mine, restored)
        n_map, how_map = loader._map_into(mapped, expected, store, snap, rows, rank, snap.ref.path)
        n_copy, how_copy = loader._copy_into(copied, expected, store, snap, rank)
        assert n_map == n_copy == sum(r.nbytes for r in mine) > 0
        assert how_map == "mapped from the part files" and how_copy.startswith("restore engine, staged")
        assert set(restored) == set(mapped) == set(copied)
        for name, t in restored.items():
            assert torch.equal(mapped[name].data, t) and torch.equal(copied[name].data, t), name


def test_a_parameter_the_snapshot_does_not_fit_is_refused_on_both_paths(tmp_path, tiny_dir):  # noqa: F811
    url = _snap(f"file://{tmp_path}/store", tiny_dir, tp=1)
    store, ref = SnapshotStore.for_snapshot(url)
    snap = store.load(ref)
    rows = store.read_manifest(snap.ref)
    loader = ThawlineLoader(LoadConfig(load_format="thawline", model_loader_extra_config={"snapshot_url": url}))
    restored = restore(url, 0).tensors
    victim = max(rows, key=lambda r: r.nbytes)
    expected = {r.name: (tuple(r.shape), r.dtype) for r in rows}
    expected[victim.name] = ((1, *victim.shape), victim.dtype)  # the model wants another shape
    for run in (lambda p: loader._map_into(p, expected, store, snap, rows, 0, snap.ref.path),
                lambda p: loader._copy_into(p, expected, store, snap, 0)):
        params = _zeros(rows, restored)
        with pytest.raises(SnapshotMismatch, match=victim.name):
            run(params)
        assert not params[victim.name].data.any()  # refused before any byte landed
