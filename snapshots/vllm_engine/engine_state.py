"""Engine state stored in a snapshot (engine/engine_state.json) and the pure checks made at restore.

Pure logic: no vLLM, no torch, no Ray. The vLLM side (snapshots/vllm_engine/loader.py, start.py) calls
these functions so every failure message is decided, and unit-tested, in one place.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field

ENGINE_STATE_PATH = "engine/engine_state.json"
HF_DIR = "engine/hf"
COMPILE_CACHE_PATH = "engine/compile_cache.tar"
NCCL_TOPO_PATH = "engine/nccl/topo.xml"
NCCL_GRAPH_PATH = "engine/nccl/graph.xml"
# Files of the HF checkpoint that an engine needs besides the weights (copied into engine/hf/).
HF_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
)


class RankPlacement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(description="Global rank in the engine's world (TP x PP).")
    local_rank: int = Field(description="Rank within its node.")
    device: str = Field(description="Device the rank ran on, e.g. cuda:3 or cpu.")
    hostname: str = Field(description="Node the rank ran on when the snapshot was made.")


class ParallelLayout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    world_size: int = Field(description="Number of ranks (tp_size * pp_size).")
    tp_size: int = Field(description="Tensor-parallel degree.")
    pp_size: int = Field(default=1, description="Pipeline-parallel degree.")
    backend: str = Field(description="torch.distributed backend of the TP group: nccl on CUDA, gloo on CPU.")
    executor: str = Field(description="vLLM distributed executor backend (mp, ray, uni).")
    placement: str = Field(description="How ranks were placed: one node, one bundle per rank (STRICT_PACK on Ray).")
    ranks: list[RankPlacement] = Field(description="rank -> device/node, ordered by rank.")


class KVCacheProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_gpu_blocks: int = Field(description="KV-cache blocks vLLM sized (profiling on GPU, VLLM_CPU_KVCACHE_SPACE on CPU).")
    block_size: int = Field(description="Tokens per KV-cache block.")
    kv_cache_memory_bytes: int | None = Field(default=None, description="Bytes of KV cache per rank, when known.")


class EngineState(BaseModel):
    """Everything besides the weights that a restored engine reuses instead of recomputing."""

    model_config = ConfigDict(extra="forbid")
    engine: str = Field(default="vllm", description="Engine name.")
    engine_version: str = Field(description="vLLM version that made the snapshot.")
    device_type: str = Field(description="cpu or cuda: the platform the snapshot was made on.")
    engine_args: dict[str, Any] = Field(description="vLLM engine args to start with (model path and load format excluded).")
    model_path: str = Field(description="Local path the engine saw as `model` at creation; reused so compile-cache keys match.")
    kv_cache: KVCacheProfile = Field(description="KV-cache size found when the snapshot was made.")
    layout: ParallelLayout = Field(description="Parallel layout the snapshot was made with.")
    nccl_topo_file: str | None = Field(default=None, description="Snapshot path of the NCCL topology dump (CUDA only).")
    nccl_graph_file: str | None = Field(default=None, description="Snapshot path of the NCCL search-graph dump (CUDA only).")
    compile_cache: str | None = Field(default=None, description="Snapshot path of the torch.compile cache archive, if compilation ran.")
    hf_files: list[str] = Field(default_factory=list, description="Config/tokenizer/generation files under engine/hf/.")
    accelerator: "AcceleratorInfo | None" = Field(default=None, description="Devices the snapshot was made on "
                                                  "(None: made before this was recorded).")


# ---------------------------------------------------------------------------------------------
# Checks made when a snapshot is restored into an engine. Each returns None or raises
# SnapshotMismatch with the one line the operator should read.


class SnapshotMismatch(RuntimeError):
    """The snapshot cannot serve this engine as configured (TP size, version, parameters, ranks)."""


def check_tp_size(snapshot_tp: int, engine_tp: int, *, where: str) -> None:
    if snapshot_tp != engine_tp:
        raise SnapshotMismatch(
            f"snapshot {where} was made at tensor_parallel_size={snapshot_tp} but the engine runs at "
            f"tensor_parallel_size={engine_tp}; start it with --tp {snapshot_tp} or create a snapshot at TP={engine_tp}"
        )


def check_engine_version(snapshot_version: str | None, running_version: str, *, allow_mismatch: bool, where: str) -> None:
    """Fused/sharded parameter layouts are a vLLM implementation detail, so versions must match."""
    if snapshot_version == running_version or allow_mismatch:
        return
    raise SnapshotMismatch(
        f"snapshot {where} was made by vLLM {snapshot_version} but this is vLLM {running_version}; "
        f"re-create it, or pass allow_version_mismatch=True to load it anyway"
    )


def check_parameters(
    expected: dict[str, tuple[tuple[int, ...], str]],
    found: dict[str, tuple[tuple[int, ...], str]],
    *,
    rank: int,
    where: str,
) -> None:
    """`expected`: the model's parameters {name: (shape, dtype)}; `found`: the snapshot rank's tensors."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing parameters {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected parameters {_few(unexpected)}")
    for name in sorted(set(expected) & set(found)):
        if expected[name] != found[name]:
            (es, ed), (fs, fd) = expected[name], found[name]
            problems.append(f"parameter {name} is {list(fs)} {fd} in the snapshot but the model wants {list(es)} {ed}")
            break
    if problems:
        raise SnapshotMismatch(f"snapshot {where} rank {rank} does not fit the model: " + "; ".join(problems))


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


def shard_digest(checksums: Iterable[tuple[str, int]]) -> str:
    """Digest of one rank's shard: sha256 over its sorted (tensor name, checksum) pairs."""
    h = hashlib.sha256()
    for name, value in sorted(checksums):
        h.update(f"{name}\0{int(value):016x}\n".encode())
    return h.hexdigest()[:32]


def rank_digests(rows: Iterable[Any], tp_size: int) -> list[str]:
    """Per-rank shard digests from manifest rows (objects with .rank, .name, .checksum)."""
    by_rank: dict[int, list[tuple[str, int]]] = {r: [] for r in range(tp_size)}
    for row in rows:
        by_rank[row.rank].append((row.name, row.checksum))
    return [shard_digest(by_rank[r]) for r in range(tp_size)]


def agreement_failure(contributions: list[dict]) -> str | None:
    """Decide whether the TP group restored one consistent snapshot.

    `contributions[r]` is what rank r put into the all-gather:
    {"snapshot": "<model>/<id>", "digest": shard digest of what it restored,
     "expected": the per-rank digests its snapshot.json records}.
    Rank 0's snapshot is the reference, so every rank reaches the same verdict and message.
    Returns None when all agree, else the one-line error naming the ranks that differ.
    """
    ref = contributions[0]
    bad = []
    for r, c in enumerate(contributions):
        expected = ref["expected"][r] if r < len(ref["expected"]) else None
        if c["snapshot"] != ref["snapshot"] or c["digest"] != expected:
            bad.append(r)
    if not bad:
        return None
    detail = ", ".join(f"rank {r} restored {contributions[r]['snapshot']} (digest {contributions[r]['digest'][:12]})" for r in bad)
    return (
        f"TP ranks disagree on the snapshot: ranks {bad} differ from rank 0's {ref['snapshot']}: {detail}; "
        "every rank must restore the same snapshot"
    )


# ---------------------------------------------------------------------------------------------
# Engine identity: what a snapshot depends on besides the weights. The vLLM version (parameter
# layouts), the engine overrides (max_model_len, dtype... size the KV cache) and the accelerator
# (the recorded KV block count and the NCCL topology/graph dumps are only valid on the same GPU
# model, memory, count and interconnect).


class AcceleratorInfo(BaseModel):
    """The devices a snapshot's engine ran on (recorded at capture, probed again at restore)."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="cpu or cuda.")
    name: str = Field(default="cpu", description="Device model, e.g. NVIDIA H100 80GB HBM3 (cpu: 'cpu').")
    memory_mib: int = Field(default=0, description="Memory of one device in MiB (0 on cpu).")
    count: int = Field(default=1, description="Devices the TP group used (one per rank).")
    topology: str | None = Field(default=None, description="Digest of the devices' interconnect matrix "
                                 "(nvidia-smi topo -m) when count > 1; None otherwise.")

    def label(self) -> str:
        if self.kind == "cpu":
            return f"cpu x{self.count}"
        topo = f", topology {self.topology[:8]}" if self.topology else ""
        return f"{self.count}x {self.name} ({self.memory_mib} MiB{topo})"


def identity_digest(engine_version: str, overrides: dict[str, Any], accelerator: AcceleratorInfo) -> str:
    """Short digest of (vLLM version, engine overrides, accelerator): part of the first-boot id, so
    replicas that differ in any of them never share (and never fail on) one snapshot."""
    import json

    blob = json.dumps({"v": engine_version, "o": overrides, "a": accelerator.model_dump()},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def identity_mismatch(*, where: str, snapshot_version: str | None, snapshot_accelerator: AcceleratorInfo | None,
                      running_version: str, running_accelerator: AcceleratorInfo | None) -> str | None:
    """One line naming both sides when a snapshot was made under another vLLM version or on another
    accelerator; None when they match. A snapshot that recorded no accelerator (made before it was
    recorded) matches any accelerator of the same kind."""
    problems = []
    if snapshot_version != running_version:
        problems.append(f"vLLM {snapshot_version} (snapshot) vs vLLM {running_version} (this replica)")
    if snapshot_accelerator is not None and running_accelerator is not None and snapshot_accelerator != running_accelerator:
        problems.append(f"{snapshot_accelerator.label()} (snapshot) vs {running_accelerator.label()} (this replica)")
    if not problems:
        return None
    return f"snapshot {where} was made under a different engine: " + "; ".join(problems)


def replay_machine_state(state: EngineState, running: AcceleratorInfo) -> bool:
    """Whether a restore may replay the machine-specific state (KV block count, NCCL topology and
    graph): only on the accelerator it was recorded on. A snapshot that recorded none (made
    before the accelerator was recorded) is replayed as before."""
    return state.accelerator is None or state.accelerator == running


EngineState.model_rebuild()
