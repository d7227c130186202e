"""Pure checks made when a snapshot is restored into an engine, and the engine-state schema."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from snapshots.vllm_engine.engine_state import (
    EngineState,
    SnapshotMismatch,
    agreement_failure,
    check_engine_version,
    check_parameters,
    check_tp_size,
    rank_digests,
    shard_digest,
)
from snapshots.manifest import ManifestRow


def _row(rank, name, checksum):
    return ManifestRow(rank=rank, name=name, file=f"rank-{rank}/part-0.bin", offset=0, nbytes=4, dtype="float32", shape=(1,), checksum=checksum)


def test_tp_mismatch_names_both_sizes():
    check_tp_size(2, 2, where="s")
    with pytest.raises(SnapshotMismatch, match=r"tensor_parallel_size=2 .* tensor_parallel_size=1"):
        check_tp_size(2, 1, where="file:///s/m/1")


def test_version_mismatch_fails_unless_overridden():
    check_engine_version("0.32.0", "0.32.0", allow_mismatch=False, where="s")
    with pytest.raises(SnapshotMismatch, match=r"vLLM 0.31.0 but this is vLLM 0.32.0.*allow_version_mismatch"):
        check_engine_version("0.31.0", "0.32.0", allow_mismatch=False, where="s")
    check_engine_version("0.31.0", "0.32.0", allow_mismatch=True, where="s")


def test_missing_and_unexpected_parameters_are_named():
    model = {"a.weight": ((2, 2), "float32"), "b.weight": ((4,), "float32")}
    check_parameters(model, dict(model), rank=0, where="s")
    with pytest.raises(SnapshotMismatch) as exc:
        check_parameters(model, {"a.weight": ((2, 2), "float32"), "c.weight": ((1,), "float32")}, rank=1, where="s")
    msg = str(exc.value)
    assert "rank 1" in msg and "missing parameters b.weight" in msg and "unexpected parameters c.weight" in msg
    assert "\n" not in msg


def test_shape_or_dtype_difference_is_named():
    model = {"a.weight": ((2, 2), "float32")}
    with pytest.raises(SnapshotMismatch, match=r"a.weight is \[4, 2\] float32 .* wants \[2, 2\] float32"):
        check_parameters(model, {"a.weight": ((4, 2), "float32")}, rank=0, where="s")
    with pytest.raises(SnapshotMismatch, match="bfloat16"):
        check_parameters(model, {"a.weight": ((2, 2), "bfloat16")}, rank=0, where="s")


def test_long_name_lists_are_shortened():
    model = {f"p{i}": ((1,), "float32") for i in range(20)}
    with pytest.raises(SnapshotMismatch, match=r"\(\+15 more\)"):
        check_parameters(model, {}, rank=0, where="s")


def test_shard_digest_is_order_independent_and_content_sensitive():
    a = shard_digest([("x", 1), ("y", 2)])
    assert a == shard_digest([("y", 2), ("x", 1)])
    assert a != shard_digest([("x", 1), ("y", 3)])
    assert a != shard_digest([("x", 1), ("z", 2)])


def test_rank_digests_split_rows_by_rank():
    rows = [_row(0, "w", 1), _row(1, "w", 2), _row(0, "v", 3)]
    d = rank_digests(rows, 2)
    assert d == [shard_digest([("w", 1), ("v", 3)]), shard_digest([("w", 2)])]


def _contrib(snapshot, digest, expected):
    return {"snapshot": snapshot, "digest": digest, "expected": expected, "error": None}


def test_agreement_passes_when_every_rank_restored_its_recorded_shard():
    expected = ["d0", "d1"]
    assert agreement_failure([_contrib("m/1", "d0", expected), _contrib("m/1", "d1", expected)]) is None


def test_agreement_names_the_rank_from_another_snapshot():
    msg = agreement_failure([_contrib("m/1", "d0", ["d0", "d1"]), _contrib("m/2", "e1", ["e0", "e1"])])
    assert msg is not None and "ranks [1]" in msg and "m/2" in msg and "m/1" in msg


def test_agreement_catches_same_id_with_different_bytes():
    # Same id (e.g. two stores holding different snapshots under one id): the digest differs.
    msg = agreement_failure([_contrib("m/1", "d0", ["d0", "d1"]), _contrib("m/1", "xx", ["d0", "xx"])])
    assert msg is not None and "ranks [1]" in msg


def test_engine_state_rejects_unknown_fields():
    base = {
        "engine_version": "0.32.0", "device_type": "cpu", "engine_args": {}, "model_path": "/x",
        "kv_cache": {"num_gpu_blocks": 8, "block_size": 16},
        "layout": {"world_size": 1, "tp_size": 1, "backend": "gloo", "executor": "uni", "placement": "p",
                   "ranks": [{"rank": 0, "local_rank": 0, "device": "cpu", "hostname": "h"}]},
    }
    state = EngineState.model_validate(base)
    assert state.layout.ranks[0].device == "cpu" and state.compile_cache is None
    assert EngineState.model_validate_json(state.model_dump_json()) == state
    with pytest.raises(ValidationError):
        EngineState.model_validate({**base, "surprise": 1})
