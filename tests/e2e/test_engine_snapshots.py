"""vLLM restores tensor-parallel snapshots (issue 3): parity, integrity and agreement, stores.

Every engine runs in its own process (tests/e2e/engine_runner.py). Engines and snapshots are
shared through module/session fixtures; generations are MAX_TOKENS greedy tokens.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import MAX_TOKENS, PROMPTS, run_engine  # tests/e2e/conftest.py


def _tokens(spec: dict, *, tp: int = 1) -> list[list[int]]:
    result, output = run_engine({**spec, "prompts": PROMPTS, "max_tokens": MAX_TOKENS}, tp=tp)
    assert "tokens" in result, f"engine failed: {result}\n{output[-3000:]}"
    return result["tokens"]


@pytest.fixture(scope="module")
def hf_tokens(tiny_model_dir) -> list[list[int]]:
    """(a) plain vLLM loading the HF dir at TP=1: the reference."""
    return _tokens({"action": "hf", "hf_dir": str(tiny_model_dir), "tp": 1})


def test_snapshot_is_self_contained(tiny_snapshot_url):
    from snapshots.store import SnapshotStore

    store, ref = SnapshotStore.for_snapshot(tiny_snapshot_url)
    meta = store.inspect(ref)
    assert meta.engine.name == "vllm" and meta.tp_size == 1 and meta.dtype == "float32"
    for f in ("engine/engine_state.json", "engine/hf/config.json", "engine/hf/tokenizer.json",
              "engine/hf/tokenizer_config.json", "engine/hf/generation_config.json"):
        assert f in meta.files, f
    # vLLM's fused layout, not the HF one: the snapshot holds what the engine holds.
    names = {row.name for row in store.read_manifest(store.resolve(ref), 0)}
    assert "model.layers.0.self_attn.qkv_proj.weight" in names and "model.layers.0.mlp.gate_up_proj.weight" in names
    assert "model.layers.0.self_attn.q_proj.weight" not in names


def test_tp1_snapshot_matches_hf_dir_token_for_token(tiny_snapshot_url, hf_tokens):
    assert len(hf_tokens) == len(PROMPTS) and all(len(t) == MAX_TOKENS for t in hf_tokens)
    # The tiny model's greedy output is varied, so equality below is a real check.
    assert len({tok for seq in hf_tokens for tok in seq}) > MAX_TOKENS
    assert len({tuple(seq) for seq in hf_tokens}) == len(PROMPTS)
    result, output = run_engine({"action": "snapshot", "url": tiny_snapshot_url, "prompts": PROMPTS,
                                 "max_tokens": MAX_TOKENS})
    assert result.get("tokens") == hf_tokens, f"{result}\n{output[-3000:]}"
    # the loader reported its weight phase as an event the starter reads (load_timing.py)
    (load,) = result["rank_loads"]
    assert load["event"] == "thawline.rank_loaded" and load["rank"] == 0
    assert load["snapshot"].startswith("tiny/")
    assert load["nbytes"] > 0 and 0 < load["restore_s"] <= load["weights_s"]


def test_tp2_snapshot_matches_tp1_token_for_token(tiny_tp2_snapshot_url, hf_tokens):
    from snapshots.store import SnapshotStore

    store, ref = SnapshotStore.for_snapshot(tiny_tp2_snapshot_url)
    rows = store.read_manifest(store.resolve(ref))
    qkv = {r.rank: r.shape for r in rows if r.name == "model.layers.0.self_attn.qkv_proj.weight"}
    assert set(qkv) == {0, 1} and qkv[0][0] * 2 == (128 + 2 * 64)  # each rank holds half of q, k, v
    assert _tokens({"action": "snapshot", "url": tiny_tp2_snapshot_url}, tp=2) == hf_tokens


def test_snapshot_on_s3_serves_like_file(tiny_snapshot_url, hf_tokens, s3_bucket_url, moto_server):
    import s3fs

    local = Path(tiny_snapshot_url.removeprefix("file://"))
    model, sid = local.parent.name, local.name
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_server}, skip_instance_cache=True)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(f), f"{s3_bucket_url.removeprefix('s3://')}/{model}/{sid}/{f.relative_to(local)}")
    s3_url = f"{s3_bucket_url}/{model}/{sid}"
    assert _tokens({"action": "snapshot", "url": s3_url}) == hf_tokens


def _copy_snapshot(url: str, dest_store: Path) -> str:
    src = Path(url.removeprefix("file://"))
    dst = dest_store / src.parent.name / src.name
    shutil.copytree(src, dst)
    return dst.as_uri()


def test_corrupted_snapshot_fails_start_naming_the_tensor(tiny_snapshot_url, e2e_tmp):
    from snapshots.store import SnapshotStore

    url = _copy_snapshot(tiny_snapshot_url, e2e_tmp / "corrupt-store")
    store, ref = SnapshotStore.for_snapshot(url)
    resolved = store.resolve(ref)
    target = "model.layers.1.mlp.down_proj.weight"
    row = next(r for r in store.read_manifest(resolved, 0) if r.name == target)
    part = Path(resolved.path) / row.file
    with open(part, "r+b") as f:  # flip one byte in the middle of that tensor
        f.seek(row.offset + row.nbytes // 2)
        b = f.read(1)
        f.seek(row.offset + row.nbytes // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    result, output = run_engine({"action": "snapshot", "url": url, "prompts": PROMPTS[:1], "max_tokens": 1})
    assert "tokens" not in result
    assert target in result["error"] and "rank 0" in result["error"], result


def test_ranks_restored_from_different_snapshots_fail_agreement(tiny_tp2_snapshot_url):
    """Rank 1 restores another (valid) snapshot of the same model: the TP all-gather rejects it."""
    from snapshots.restore import restore
    from snapshots.store import SnapshotStore

    store, ref = SnapshotStore.for_snapshot(tiny_tp2_snapshot_url)
    resolved = store.resolve(ref)
    meta = store.inspect(resolved)
    writer = store.create_writer(resolved.model, None, tp_size=2)
    for rank in range(2):
        tensors = restore(resolved.url, rank).tensors
        with writer.rank_writer(rank) as rw:
            for name, t in tensors.items():
                # A different but loadable model: rank 1's final norm is scaled.
                rw.add(name, t * 1.5 if (rank == 1 and name == "model.norm.weight") else t.clone())
    for rel in meta.files:
        writer.put_file(rel, store.fs.cat_file(f"{resolved.path}/{rel}"))
    other_url = writer.url
    writer.commit({"dtype": meta.dtype, "engine": meta.engine.model_dump()})
    assert other_url != resolved.url

    result, _ = run_engine(
        {"action": "snapshot", "url": resolved.url, "prompts": PROMPTS[:1], "max_tokens": 1,
         "overrides": {"rank_urls": {"1": other_url}}},
        tp=2,
    )
    assert "tokens" not in result
    assert "disagree" in result["error"] and "ranks [1]" in result["error"], result


def test_tp_size_different_from_the_snapshot_fails_clearly(tiny_tp2_snapshot_url):
    # Checked in the caller's process before vLLM is even imported: no engine is spawned.
    from snapshots.vllm_engine.engine_state import SnapshotMismatch
    from snapshots.vllm_engine.start import prepare_engine_start

    with pytest.raises(SnapshotMismatch) as exc:
        prepare_engine_start(tiny_tp2_snapshot_url, tensor_parallel_size=1)
    msg = str(exc.value)
    assert "tensor_parallel_size=2" in msg and "tensor_parallel_size=1" in msg and "\n" not in msg
