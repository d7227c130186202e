"""The thawline loaders' options: what rides in vLLM's `model_loader_extra_config`.

Pure pydantic (no vLLM), so the starter builds them before vLLM is imported. Extra keys are
rejected: a typo in an option fails the load instead of being ignored.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoaderOptions(BaseModel):
    """load_format="thawline" (snapshots/vllm_engine/loader.py)."""

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
    """load_format="thawline_capture" (snapshots/vllm_engine/capture_loader.py)."""

    model_config = ConfigDict(extra="forbid")
    store_url: str = Field(description="Store URL the snapshot is written to.")
    model: str = Field(description="Model name in the store.")
    snapshot_id: str = Field(description="Id claimed by the coordinator (create_writer).")
    hf_dir: str = Field(description="HF checkpoint directory to read the weights from.")
    storage_options: dict = Field(default_factory=dict, description="fsspec storage options.")
