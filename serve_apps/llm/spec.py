"""EngineSpec: what an LLM replica (server.LLMServer) asks its engine host to start.

Internal to the LLM app (the gateway <-> LLM app contract is gateway/llm_protocol.py). The
replica builds an EngineSpec and hands the object itself to its host, typed end to end: to a
warm-pool actor it goes pickled (a pydantic model pickles with its fields, so the placement group
and runtime env stay the very objects Ray hands the replica: `Any` fields are kept as they are).
Pure (pydantic only): unit-tested in tests/unit/test_llm_spec.py.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CaptureSpec(BaseModel):
    """Snapshot on first boot: boot from the source and write the snapshot while loading."""

    model_config = ConfigDict(extra="forbid")

    source_dir: str = Field(description="Local directory of the source model (HF layout).")
    tp: int = Field(ge=1, description="Tensor-parallel degree the snapshot is made at.")
    store_url: str = Field(description="Snapshot store the snapshot is written to.")
    name: str = Field(description="Snapshot name in the store.")
    snapshot_id: str = Field(description="The snapshot id this boot claims and writes.")


class AdapterSpec(BaseModel):
    """LoRA adapters the engine serves: loaded on demand from the store, unloaded when idle."""

    model_config = ConfigDict(extra="forbid")

    store_url: str = Field(description="Store holding the adapters (snapshots/adapters layout).")
    model: str = Field(description="Model name the adapters were pushed under.")
    max_lora_rank: int = Field(ge=1, description="Largest rank the engine was started for.")
    idle_unload_s: float = Field(gt=0, description="Unload an adapter after this many idle seconds.")


class EngineSpec(BaseModel):
    """Exactly one of `snapshot_url` (restore a committed snapshot) or `capture` (first boot)."""

    model_config = ConfigDict(extra="forbid")

    served_model_id: str = Field(description="Model name the engine answers to.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="vLLM engine args.")
    verify: bool = Field(False, description="Re-hash every tensor on restore.")
    snapshot_url: str | None = None
    capture: CaptureSpec | None = None
    accelerator: dict[str, Any] | None = Field(None, description="The replica's probed accelerator "
                                               "(engine_state.AcceleratorInfo): recorded by a capture, compared at restore.")
    gpu_ids: list[int | str] | None = Field(None, description="GPU replicas: the devices of the replica's bundles.")
    placement_group: Any = Field(None, description="GPU TP: the replica's placement group (a Ray "
                                 "PlacementGroup), so vLLM's Ray workers use its bundles.")
    runtime_env: Any = Field(None, description="The replica's Ray runtime_env (a dict): its env_vars are "
                             "set in the host before the engine starts, and vLLM's Ray workers start under it.")
    adapters: AdapterSpec | None = Field(None, description="LoRA adapters served on demand; None: the base only.")

    @model_validator(mode="after")
    def _one_source(self) -> "EngineSpec":
        if (self.snapshot_url is None) == (self.capture is None):
            raise ValueError("engine spec needs snapshot_url or capture (exactly one)")
        return self
