"""A replica whose engine (vLLM version, engine overrides, accelerator) differs from the one a
snapshot was made under never restores it as is: a first-boot app re-captures under its own id
(the old snapshot stays for replicas that match it), or refuses in one line naming both sides
(`on_engine_mismatch: refuse`); a snapshot_url made by another vLLM version is refused in one
line. On CPU: snapshots are written with the store's writer (no engine) and the replica's
identity comes from THAWLINE_VLLM_VERSION / THAWLINE_ACCELERATOR, as the probe reads them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from serve_apps.llm.args import LLMAppArgs, first_boot_ref
from serve_apps.llm.first_boot import EngineMismatchRefused, committed_snapshot, engine_identity
from snapshots.store import SnapshotStore
from snapshots.vllm_engine.engine_state import (
    ENGINE_STATE_PATH,
    AcceleratorInfo,
    EngineState,
    KVCacheProfile,
    ParallelLayout,
    RankPlacement,
    replay_machine_state,
)

pytestmark = pytest.mark.integration

H100 = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}
L40S = {"kind": "cuda", "name": "NVIDIA L40S", "memory_mib": 46068}


def _engine_snapshot(store_url: str, name: str, sid: str, *, version: str, accelerator: dict) -> str:
    w = SnapshotStore(store_url).create_writer(name, sid, tp_size=1)
    with w.rank_writer(0) as rw:
        rw.add("w", np.ones((16,), dtype=np.float32))
    state = EngineState(
        engine_version=version, device_type=accelerator["kind"], engine_args={}, model_path="/x/hf",
        kv_cache=KVCacheProfile(num_gpu_blocks=1234, block_size=16),
        layout=ParallelLayout(world_size=1, tp_size=1, backend="nccl", executor="ray", placement="one node",
                              ranks=[RankPlacement(rank=0, local_rank=0, device="cuda:0", hostname="n")]),
        accelerator=AcceleratorInfo(count=1, **accelerator),
    )
    w.put_file(ENGINE_STATE_PATH, state.model_dump_json().encode())
    w.commit({"engine": {"name": "vllm", "version": version}, "engine_state": ENGINE_STATE_PATH})
    return w.url


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("THAWLINE_VLLM_VERSION", "0.32.0")
    monkeypatch.setenv("THAWLINE_ACCELERATOR", json.dumps(H100))
    return f"file://{tmp_path}/snaps"


def _args(store: str, **kw) -> LLMAppArgs:
    return LLMAppArgs(served_model_id="m", model_source="/models/m", snapshot_store=store,
                      accelerator="gpu", accelerator_type="H100", **kw)


def test_first_boot_finds_its_own_snapshot(store):
    args = _args(store)
    ident = engine_identity(args)
    assert committed_snapshot(args, ident) is None  # nothing yet: this replica captures
    name, sid = first_boot_ref(args, ident.digest)
    url = _engine_snapshot(store, name, sid, version="0.32.0", accelerator=H100)
    assert committed_snapshot(args, engine_identity(args)) == url


@pytest.mark.parametrize("change", ["version", "accelerator", "overrides"])
def test_first_boot_recaptures_under_another_engine_and_keeps_the_old(store, monkeypatch, change):
    args = _args(store)
    name, old_sid = first_boot_ref(args, engine_identity(args).digest)
    old_url = _engine_snapshot(store, name, old_sid, version="0.32.0", accelerator=H100)
    if change == "version":
        monkeypatch.setenv("THAWLINE_VLLM_VERSION", "0.33.1")
    elif change == "accelerator":
        monkeypatch.setenv("THAWLINE_ACCELERATOR", json.dumps(L40S))
    else:
        args = _args(store, engine_overrides={"max_model_len": 4096})
    ident = engine_identity(args)
    new_sid = first_boot_ref(args, ident.digest)[1]
    assert new_sid != old_sid
    # Not found under its own id: this replica re-captures (no restore of the old one, no loop).
    assert committed_snapshot(args, ident) is None
    # ...and the old snapshot is still what a matching replica restores.
    monkeypatch.setenv("THAWLINE_VLLM_VERSION", "0.32.0")
    monkeypatch.setenv("THAWLINE_ACCELERATOR", json.dumps(H100))
    assert committed_snapshot(_args(store), engine_identity(_args(store))) == old_url


def test_first_boot_refuses_in_one_line_naming_both_versions(store, monkeypatch):
    args = _args(store, on_engine_mismatch="refuse")
    name, sid = first_boot_ref(args, engine_identity(args).digest)
    _engine_snapshot(store, name, sid, version="0.32.0", accelerator=H100)
    monkeypatch.setenv("THAWLINE_VLLM_VERSION", "0.33.1")
    monkeypatch.setenv("THAWLINE_ACCELERATOR", json.dumps(L40S))
    with pytest.raises(EngineMismatchRefused) as info:
        committed_snapshot(args, engine_identity(args))
    msg = str(info.value)
    assert "\n" not in msg
    assert "vLLM 0.32.0 (snapshot) vs vLLM 0.33.1 (this replica)" in msg
    assert "NVIDIA H100" in msg and "NVIDIA L40S" in msg and "on_engine_mismatch: refuse" in msg


def test_snapshot_url_of_another_vllm_is_refused_in_one_line(store, monkeypatch):
    url = _engine_snapshot(store, "m", "s1", version="0.31.0", accelerator=H100)
    args = LLMAppArgs(served_model_id="m", snapshot_url=url, accelerator="gpu")
    with pytest.raises(EngineMismatchRefused) as info:
        committed_snapshot(args, engine_identity(args))
    assert "vLLM 0.31.0 (snapshot) vs vLLM 0.32.0 (this replica)" in str(info.value)
    assert "\n" not in str(info.value)


def test_snapshot_url_on_another_gpu_restores_without_replaying_machine_state(store, monkeypatch):
    url = _engine_snapshot(store, "m", "s1", version="0.32.0", accelerator=H100)
    monkeypatch.setenv("THAWLINE_ACCELERATOR", json.dumps(L40S))
    args = LLMAppArgs(served_model_id="m", snapshot_url=url, accelerator="gpu")
    ident = engine_identity(args)
    assert committed_snapshot(args, ident) == url  # recapture (default): weights still restored
    from snapshots.vllm_engine.start import read_engine_state

    state = read_engine_state(url)[3]
    assert not replay_machine_state(state, ident.accelerator)  # no recorded KV blocks / NCCL files
    assert replay_machine_state(state, AcceleratorInfo(count=1, **H100))
    refuse = LLMAppArgs(served_model_id="m", snapshot_url=url, accelerator="gpu", on_engine_mismatch="refuse")
    with pytest.raises(EngineMismatchRefused, match=r"NVIDIA H100 .* \(snapshot\) vs 1x NVIDIA L40S"):
        committed_snapshot(refuse, ident)
