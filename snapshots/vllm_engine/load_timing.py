"""The loader's timing, from each TP worker to whoever started the engine: a structured event.

Each rank's ThawlineLoader (loader.py) records one RankLoad once its weights are in and every TP
rank agreed on the snapshot. The event goes, as one JSON line, to the file named by
$THAWLINE_LOAD_TIMING_FILE, which the starter sets before the engine's processes start (they
inherit the environment, as with load_errors.py's $THAWLINE_LOAD_ERROR_FILE); unset, nothing is
written. `read_rank_loads` is the one reader (bench/engine_start.py, bench/gpu_check.py). Both
ends live here. No vLLM or torch import.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

TIMING_FILE_ENV = "THAWLINE_LOAD_TIMING_FILE"
EVENT = "thawline.rank_loaded"


class RankLoad(BaseModel):
    """One TP rank's weight load from a snapshot."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(EVENT, description="Always thawline.rank_loaded.")
    rank: int = Field(ge=0, description="The TP rank.")
    snapshot: str = Field(description="model/snapshot_id the ranks agreed on.")
    weights_s: float = Field(description="The loader's whole weight phase: restore, copy into the "
                             "parameters, TP agreement.")
    restore_s: float = Field(description="Reading the rank's bytes into the parameters (part of weights_s).")
    nbytes: int = Field(ge=0, description="The rank's weight bytes.")
    how: str = Field(description="How the bytes got into the parameters (mapped, or staged copy).")
    peak_device_mib: float = Field(description="The device's allocation high-water mark after the "
                                   "restore (weights + staging); 0 without CUDA.")


def record_rank_load(load: RankLoad) -> None:
    """Worker side: append the event (one line, one write, O_APPEND: ranks never interleave)."""
    path = os.environ.get(TIMING_FILE_ENV)
    if not path:
        return
    line = (load.model_dump_json() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_rank_loads(path: str | os.PathLike) -> list[RankLoad]:
    """Starter side: every rank's event in the file, in the order written ([] when none was)."""
    p = Path(path)
    if not p.exists():
        return []
    return [RankLoad.model_validate(json.loads(line)) for line in p.read_text().splitlines() if line.strip()]
