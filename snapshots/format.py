"""Snapshot format v1: layout constants, naming, alignment and the snapshot.json schema.

Layout of one snapshot (see snapshots/README.md, "Format v1"):

    <store>/<model>/<id>/
      .claim                 exclusive-create marker of the writer that owns <id>
      snapshot.json          written LAST: the commit marker (SnapshotMeta below)
      manifest.parquet       one row per tensor per rank (snapshots/manifest.py)
      rank-<r>/part-<p>.bin  raw tensor bytes, each tensor at a 4 KiB aligned offset
      engine/...             engine state and engine/hf/ (config, tokenizer, generation files)
"""
from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import RankOutOfRange, SnapshotCorrupt, UnsupportedFormatVersion
from .paths import check_meta_paths

FORMAT_VERSION = 1
# 4 KiB: the page size and the O_DIRECT / NVMe block size, so any tensor can be read straight
# into an aligned buffer, and every dtype view (up to 8-byte elements) lands on an aligned address.
ALIGN = 4096
# Parts are capped so one rank's bytes spread over several objects (parallel range reads, partial
# cache fetches, S3 single-object limits) while staying large enough for sequential throughput.
DEFAULT_PART_BYTES = 2 * 1024**3

SNAPSHOT_JSON = "snapshot.json"
MANIFEST = "manifest.parquet"
CLAIM = ".claim"
LATEST = "latest"
# <store>/<model>/adapters/ holds the model's LoRA adapters (snapshots/adapters/), so it is no
# snapshot id: the store's listing, `latest` and gc skip it, and no writer may claim it.
ADAPTERS = "adapters"
RESERVED_IDS = (LATEST, ADAPTERS)

# Used with fullmatch: `$` alone also matches before a trailing newline, which let "m\n" through.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


def rank_dir(rank: int) -> str:
    return f"rank-{rank}"


def part_path(rank: int, part: int) -> str:
    return f"{rank_dir(rank)}/part-{part}.bin"


def rank_fragment_path(rank: int) -> str:
    """Per-rank manifest written by RankWriter.close(); merged into manifest.parquet at commit."""
    return f"{rank_dir(rank)}/manifest.parquet"


def check_name(kind: str, value: str) -> str:
    """Model names and ids are single path components: a slash would make `<model>/<id>` ambiguous."""
    reserved = kind == "snapshot id" and value in RESERVED_IDS
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or reserved:
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-128 characters from [A-Za-z0-9._-], starting with a letter or digit"
            + (f" ({value!r} is reserved)" if reserved else "")
        )
    return value


def new_snapshot_id(now: float | None = None) -> str:
    """Sortable by creation time (UTC second), unique by a random suffix."""
    t = time.gmtime(now if now is not None else time.time())
    return time.strftime("%Y%m%dT%H%M%SZ", t) + "-" + secrets.token_hex(3)


class PartInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="Part file path relative to the snapshot dir, e.g. rank-0/part-0.bin.")
    nbytes: int = Field(description="Size of the part file in bytes (padding included).")


class RankInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(description="Tensor-parallel rank.")
    parts: list[PartInfo] = Field(description="This rank's part files, in order.")
    nbytes: int = Field(description="Sum of the rank's part file sizes.")
    tensor_bytes: int = Field(description="Sum of the rank's tensor sizes (no padding).")
    num_tensors: int = Field(description="Number of tensors of this rank.")


class EngineInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Engine that produced the tensors: 'none' (offline TP split) or 'vllm'.")
    version: str | None = Field(default=None, description="Engine version, e.g. the vLLM version.")


class SnapshotMeta(BaseModel):
    """Contents of snapshot.json. Machine-written; unknown keys are rejected so a typo fails loudly."""

    model_config = ConfigDict(extra="forbid")
    format_version: int = Field(description="Snapshot format version; readers refuse other versions.")
    model: str = Field(description="Model name (the store's first path level).")
    snapshot_id: str = Field(description="Snapshot id (the store's second path level).")
    created_at: float = Field(description="Commit time, UNIX seconds.")
    model_revision: str | None = Field(default=None, description="Source model revision or path.")
    dtype: str | None = Field(default=None, description="Main parameter dtype, e.g. bfloat16.")
    tp_size: int = Field(description="Tensor-parallel size: number of ranks.")
    pp_size: int = Field(default=1, description="Pipeline-parallel size.")
    engine: EngineInfo = Field(description="Engine name and version.")
    checksum_algorithm: str = Field(description="Per-tensor checksum algorithm (xxh3_64).")
    align: int = Field(description="Alignment of every tensor offset inside a part file.")
    ranks: list[RankInfo] = Field(description="Per-rank files and byte totals, ordered by rank.")
    total_bytes: int = Field(description="Sum of all part file sizes.")
    files: list[str] = Field(default_factory=list, description="Extra files (engine state, engine/hf/...), relative paths.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Engine-specific fields, opaque to the store.")

    def rank_info(self, rank: int) -> RankInfo:
        if not isinstance(rank, int) or rank < 0 or rank >= self.tp_size:
            raise RankOutOfRange(rank, self.tp_size)
        return self.ranks[rank]


def parse_meta(raw: bytes | str, where: str = "snapshot.json") -> SnapshotMeta:
    """Parse snapshot.json, checking the format version BEFORE the schema (a v2 file may have other keys)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SnapshotCorrupt(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SnapshotCorrupt(f"{where}: not a JSON object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise UnsupportedFormatVersion(version, FORMAT_VERSION, where=where)
    try:
        meta = SnapshotMeta.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError: keep it to one line
        first = str(exc).splitlines()
        raise SnapshotCorrupt(f"{where}: invalid ({' '.join(first[:3])})") from exc
    # Readers index ranks by position and join every named path onto a local dir: both are
    # checked here, once, so no reader ever uses an unchecked value.
    if len(meta.ranks) != meta.tp_size or any(info.rank != i for i, info in enumerate(meta.ranks)):
        raise SnapshotCorrupt(f"{where}: ranks must list ranks 0..{meta.tp_size - 1} in order")
    check_meta_paths(meta, where)
    return meta
