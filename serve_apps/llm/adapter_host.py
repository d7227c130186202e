"""The LoRA adapters one engine host serves: resolved on first use, unloaded when idle.

A request for adapter A (HandleRequest.adapter) goes through `HostAdapters.use(A)`:
vLLM's OpenAIServingModels.resolve_lora asks the registered resolvers, ours among them
(snapshots/vllm_engine/lora_resolver.py: node-cache fetch, checksums, base check), and loads the
adapter into the engine; later requests find it in `models.lora_requests` at once. The request
body then names the adapter as its `model`, which is how vLLM's serving classes pick the
LoRARequest. Within the engine vLLM keeps max_loras adapters in the batch and max_cpu_loras in
host memory, least recently used out first (an evicted adapter reloads from its cached path).
On top of that, an adapter with no request for `idle_unload_s` is removed from the engine and the
serving layer (`unload_idle`), so adapters go to zero one by one; its node-cache copy stays.

Errors are answered as error bodies (gateway/llm_protocol.py): an adapter that does not exist is
the same 404 `model_not_found` the gateway gives for one outside a key's scope; a wrong-base
adapter is a 400 naming both; a corrupted one a 500 naming the adapter and its file.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from gateway.llm_protocol import error_body, model_not_found
from serve_apps.llm.spec import AdapterSpec

log = logging.getLogger("thawline.serve")

# The unloader looks at most this often (and at least twice per idle_unload_s).
UNLOAD_CHECK_MAX_S = 5.0


def adapter_error_body(e: Exception, name: str) -> dict:
    """The error body of a failed adapter resolve (one line naming the adapter)."""
    from snapshots.adapters import AdapterBaseMismatch, AdapterCorrupt, AdapterNotFound

    if isinstance(e, AdapterNotFound):
        return model_not_found(name).body
    if isinstance(e, AdapterBaseMismatch):
        return error_body(str(e), 400, "invalid_request_error", "adapter_base_mismatch", param="model")
    if isinstance(e, AdapterCorrupt):
        return error_body(str(e), 500, "server_error", "adapter_corrupt")
    return error_body(f"adapter {name!r} could not be loaded: {type(e).__name__}: {e}", 500, "server_error",
                      "adapter_load_failed")


class HostAdapters:
    def __init__(self, spec: AdapterSpec, engine, models, resolver) -> None:
        self.spec, self.engine, self.models, self.resolver = spec, engine, models, resolver
        if resolver not in models.lora_resolvers:  # the serving layer lists resolvers when built
            models.lora_resolvers.append(resolver)
        self.last_used: dict[str, float] = {}
        self.in_flight: dict[str, int] = {}
        self.load_s: dict[str, float] = {}  # adapter -> its latest cold load (fetch + checks + engine load)
        self.unloads = 0
        self._task: asyncio.Task | None = None
        self._warm: asyncio.Task | None = None

    def start(self) -> "HostAdapters":
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._unload_loop())
        self._warm = loop.create_task(self._warm_store())  # off the start path: the base serves meanwhile
        return self

    async def _warm_store(self) -> None:
        try:
            await asyncio.to_thread(self.resolver.warm)
        except Exception as e:  # noqa: BLE001 - only a head start; the first fetch reports real errors
            log.warning("thawline: warming the adapter store's client failed: %s: %s", type(e).__name__, e)

    def stop(self) -> None:
        for task in (self._task, self._warm):
            if task is not None:
                task.cancel()
        self._task = self._warm = None

    async def resolve(self, name: str) -> dict | None:
        """Load `name` if it is not loaded; an error body when it cannot be, else None."""
        from vllm.lora.request import LoRARequest

        if name in self.models.lora_requests:
            return None
        t0 = time.perf_counter()
        try:
            out = await self.models.resolve_lora(name)
        except Exception as e:  # noqa: BLE001 - the resolver's typed errors, as bodies
            log.info("thawline: adapter %s refused: %s: %s", name, type(e).__name__, e)
            return adapter_error_body(e, name)
        if not isinstance(out, LoRARequest):  # vLLM's ErrorResponse (no resolver found it, or it failed to load)
            body = out.model_dump()
            return model_not_found(name).body if body.get("error", {}).get("code") == 404 else body
        self.load_s[name] = round(time.perf_counter() - t0, 4)
        self.last_used[name] = time.monotonic()
        log.info("thawline: adapter %s loaded in %.3f s", name, self.load_s[name])
        return None

    @asynccontextmanager
    async def active(self, name: str):
        """Around one request of adapter `name`: not unloaded while in use."""
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        try:
            yield
        finally:
            self.in_flight[name] -= 1
            self.last_used[name] = time.monotonic()

    async def unload_idle(self, now: float | None = None) -> list[str]:
        """Remove adapters idle for idle_unload_s from the engine and the serving layer."""
        now = time.monotonic() if now is None else now
        gone = []
        for name, lr in list(self.models.lora_requests.items()):
            if self.in_flight.get(name) or now - self.last_used.get(name, now) < self.spec.idle_unload_s:
                continue
            async with self.models.lora_resolver_lock[name]:
                if self.in_flight.get(name) or self.models.lora_requests.get(name) is not lr:
                    continue
                del self.models.lora_requests[name]
                await self.engine.remove_lora(lr.lora_int_id)
            self.last_used.pop(name, None)
            self.unloads += 1
            gone.append(name)
        if gone:
            log.info("thawline: unloaded idle adapters %s", gone)
        return gone

    async def _unload_loop(self) -> None:
        every = min(UNLOAD_CHECK_MAX_S, self.spec.idle_unload_s / 2)
        while True:
            await asyncio.sleep(every)
            try:
                await self.unload_idle()
            except Exception as e:  # noqa: BLE001 - keep serving; the next round retries
                log.warning("thawline: unloading idle adapters failed: %s: %s", type(e).__name__, e)

    async def describe(self) -> dict[str, Any]:
        in_engine = sorted(await self.engine.list_loras()) if self.engine is not None else []
        return {"loaded": sorted(self.models.lora_requests), "engine_lora_ids": in_engine,
                "load_s": dict(self.load_s), "unloads": self.unloads,
                "idle_unload_s": self.spec.idle_unload_s}
