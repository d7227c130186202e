"""A vLLM LoRA resolver that loads Thawline adapters from the snapshot store, through the node cache.

vLLM's OpenAI serving layer asks its registered resolvers (vllm.lora.resolver.LoRAResolverRegistry)
for a LoRARequest when a request names a model it does not know. This one answers for adapters
pushed with `thawline adapter push` (snapshots/adapters): it fetches the adapter into the node
cache (checksums verified, snapshots/adapters), checks it was trained for the served base
(architecture, hidden size, rank) and points vLLM at the local copy; vLLM then loads it into the
engine (its LRU: max_loras in the batch, max_cpu_loras in host memory).

Registered two ways: by the engine host for the app it serves (`register_resolver`, with the
served base's identity), and through the `vllm.general_plugins` entry point (plugin.py) when
THAWLINE_ADAPTER_STORE and THAWLINE_ADAPTER_MODEL are set in a process's environment (e.g. a plain
`vllm serve` with this package installed). Errors are typed (AdapterNotFound, AdapterCorrupt,
AdapterBaseMismatch) and name the adapter: vLLM passes a resolver's exception to its caller.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from snapshots.adapters import AdapterNotFound, AdapterStore, adapter_cache_root, check_base

RESOLVER_NAME = "thawline-adapters"
STORE_ENV, MODEL_ENV, RANK_ENV = "THAWLINE_ADAPTER_STORE", "THAWLINE_ADAPTER_MODEL", "THAWLINE_ADAPTER_MAX_RANK"


@dataclass(frozen=True)
class ServedBase:
    """What the engine serves, for the adapter's base check."""

    name: str
    architecture: str
    hidden_size: int

    @classmethod
    def from_hf_config(cls, name: str, hf_config) -> "ServedBase":
        arch = (getattr(hf_config, "architectures", None) or ["unknown"])[0]
        return cls(name, arch, int(hf_config.hidden_size))

    @classmethod
    def from_model_dir(cls, name: str, model_dir: str) -> "ServedBase":
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        return cls(name, (cfg.get("architectures") or ["unknown"])[0], int(cfg["hidden_size"]))


class ThawlineAdapterResolver:
    """vLLM LoRAResolver (duck-typed: vLLM only calls `resolve_lora`)."""

    def __init__(self, store_url: str, model: str, *, base: ServedBase | None = None,
                 max_lora_rank: int | None = None, cache_root: str | os.PathLike | None = None) -> None:
        self.store = AdapterStore(store_url)
        self.model, self.base, self.max_lora_rank = model, base, max_lora_rank
        self.cache_root = adapter_cache_root(cache_root)
        self.fetch_s: dict[str, float] = {}  # adapter -> seconds its last resolve took (fetch + checks)

    async def resolve_lora(self, base_model_name: str, lora_name: str):
        from vllm.lora.request import LoRARequest

        t0 = time.perf_counter()
        info, path = await asyncio.to_thread(self.store.fetch, self.model, lora_name, self.cache_root)
        base = self.base or ServedBase.from_model_dir(self.model, base_model_name)
        check_base(info, architecture=base.architecture, hidden_size=base.hidden_size,
                   served_model=base.name, max_lora_rank=self.max_lora_rank)
        self.fetch_s[lora_name] = time.perf_counter() - t0
        # lora_int_id is replaced by vLLM's serving layer with its own counter
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))

    def warm(self) -> None:
        """Start the store's client ahead of the first adapter (blocking; errors are the caller's)."""
        self.store.warm(self.model)

    def prefetch(self, lora_name: str) -> bool:
        """Fetch into the node cache only (blocking); False when there is no such adapter."""
        try:
            self.store.fetch(self.model, lora_name, self.cache_root)
            return True
        except AdapterNotFound:
            return False


def register_resolver(resolver: ThawlineAdapterResolver) -> ThawlineAdapterResolver:
    from vllm.lora.resolver import LoRAResolverRegistry

    LoRAResolverRegistry.resolvers[RESOLVER_NAME] = resolver  # replaces a previous app's, silently
    return resolver


def register_from_env() -> ThawlineAdapterResolver | None:
    """The plugin entry point's registration: only when the environment names a store and model."""
    store, model = os.environ.get(STORE_ENV), os.environ.get(MODEL_ENV)
    if not store or not model:
        return None
    rank = os.environ.get(RANK_ENV)
    return register_resolver(ThawlineAdapterResolver(store, model, max_lora_rank=int(rank) if rank else None))
