"""LLMServer: the Serve deployment that scales to zero. One replica = one vLLM engine.

A replica starts by claiming a pre-imported engine host from its node's warm pool, or building
one in its own process, then restores the snapshot through the node-local cache and starts the
engine with the recorded engine state (engine_host.EngineHost). One host runs the replica's whole
TP group: on CPU the rank workers are processes under the host's EngineCore, and the replica's
placement-group bundles reserve their CPUs; on GPU vLLM's Ray executor puts one rank worker in
each of the replica's bundles (the host gets the group, see spec.py) and the host itself sees only
the bundles' GPUs (gpus.py). It reports
starting / warm / stopped to the ReadinessBoard and keeps the marks of its cold-start timeline
for the router, which logs the whole timeline once the first token is out.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import AsyncIterator

import ray
from ray import serve

from gateway import cold_start_phases as cs
from gateway.readiness import REPLICA_STATES, STARTING, STOPPED, WARM, get_or_create_board
from serve_apps.llm.args import LLMAppArgs, adapter_location, effective_engine_overrides, first_boot_ref, parked_key
from serve_apps.llm.first_boot import committed_snapshot, engine_identity, local_source
from serve_apps.llm.node_cache import pin_node_id
from serve_apps.llm.gpus import rank_bundles, visible_devices
from serve_apps.llm.snapshot_ahead import use_resolved
from serve_apps.llm.spec import AdapterSpec, CaptureSpec, EngineSpec
from serve_apps.llm.timeline import process_start_time

log = logging.getLogger("thawline.serve")

# A pooled host still importing is worth waiting for: importing here instead would compete
# with it for the same CPUs and finish later.
POOL_PENDING_WAIT_S = 120.0
# The GPU probe tasks need only a worker process: their bundles are reserved and idle.
GPU_PROBE_TIMEOUT_S = 60.0
# Parking is two actor calls on this node; past this the engine is stopped instead.
PARK_TIMEOUT_S = 30.0
# How a replica got its engine host (info["host"]): a parked engine it adopted, a pooled host it
# started an engine in, or its own process.
HOST_PARKED, HOST_POOLED, HOST_OWN = "parked", "warm_pool", "replica"


class _LocalHost:
    """EngineHost in the replica's own process, with the pooled host's call shape."""

    def __init__(self) -> None:
        from serve_apps.llm.engine_host import EngineHost

        self.host = EngineHost()

    async def start(self, spec: EngineSpec) -> dict:
        return await self.host.start(spec)

    async def generate(self, request: dict) -> dict:
        return await self.host.generate(request)

    async def generate_stream(self, request: dict) -> AsyncIterator[dict]:
        async for chunk in self.host.generate_stream(request):
            yield chunk

    async def adapters(self) -> dict | None:
        return await self.host.adapters()

    async def unload_idle_adapters(self) -> list[str]:
        return await self.host.unload_idle_adapters()

    async def close(self) -> None:
        self.host.shutdown()


class _PooledHost:
    """A claimed warm-pool actor; requests go to it as actor calls (streamed chunk by chunk)."""

    def __init__(self, actor) -> None:
        self.actor = actor

    async def start(self, spec: EngineSpec) -> dict:
        return await self.actor.start.remote(spec)  # pickled as it is: the host gets the EngineSpec

    async def generate(self, request: dict) -> dict:
        return await self.actor.generate.remote(request)

    async def generate_stream(self, request: dict) -> AsyncIterator[dict]:
        from serve_apps.llm.warm_pool import host_stream

        async for chunk in host_stream(self.actor, request):
            yield chunk

    async def adapters(self) -> dict | None:
        return await self.actor.adapters.remote()

    async def unload_idle_adapters(self) -> list[str]:
        return await self.actor.unload_idle_adapters.remote()

    async def adopt(self) -> dict:
        return await self.actor.adopt.remote()

    async def close(self) -> None:
        # The replica owns the claimed host and stops it (the pool does only if we die first).
        from serve_apps.llm.warm_pool import stop_host

        await stop_host(self.actor)

    async def park(self, pool, app: str, key: str, owner: str, budget_bytes: int) -> None:
        """Hand the started engine back to the node's pool (it stops it when over budget); stop
        it here if the pool cannot take it."""
        try:
            nbytes = await asyncio.wait_for(self.actor.park.remote(), PARK_TIMEOUT_S)
            await asyncio.wait_for(pool.park.remote(app, key, [self.actor], owner, nbytes, budget_bytes),
                                   PARK_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - an engine nobody keeps must not linger
            log.warning("thawline: parking the engine failed (%s: %s); stopping it", type(e).__name__, e)
            await self.close()


def adapter_spec(args: LLMAppArgs) -> AdapterSpec | None:
    """What the engine host needs to serve the app's adapters (None: the app serves none)."""
    where = adapter_location(args)
    if where is None:
        return None
    return AdapterSpec(store_url=where[0], model=where[1], max_lora_rank=args.adapters.max_lora_rank,
                       idle_unload_s=args.adapters.idle_unload_s)


def _gpu_ids_here() -> list:
    return ray.get_gpu_ids()


async def bundle_gpu_ids(args: LLMAppArgs) -> list[str] | None:
    """GPU replicas: the devices of the replica's rank bundles (gpus.py says why the host needs
    them). Ray pins a bundle's GPU when the group is placed, so a zero-CPU probe task in each
    bundle reads exactly the device the rank worker there will get; the bundles are still free
    (the replica holds no GPU, the workers do not exist yet)."""
    if args.accelerator != "gpu":
        return None
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = ray.util.get_current_placement_group()
    if pg is None:
        return None  # not under Serve's placement group: nothing to narrow to
    probe = ray.remote(_gpu_ids_here)
    refs = [probe.options(num_cpus=0, num_gpus=pg.bundle_specs[i]["GPU"],
                          scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)).remote()
            for i in rank_bundles(pg.bundle_specs, args.tensor_parallel_size)]
    return visible_devices(await asyncio.wait_for(asyncio.gather(*refs), GPU_PROBE_TIMEOUT_S))


def _replica_state_gauge():
    from ray.util import metrics

    return metrics.Gauge("thawline_llm_replica_state", description="1 for an LLM replica's current state "
                         "(starting = cold start in progress, warm = serving, stopped).",
                         tag_keys=("app", "replica", "state"))


class LLMServer:
    def _report(self, state: str, phase: str | None = None) -> None:
        """Tell the ReadinessBoard (the gateway's cold/warm view, with the cold-start phase a
        starting replica is in) and Ray's metrics."""
        self._board.report.remote(self.app_name, self.replica_id, state, phase)
        for s in REPLICA_STATES:
            self._state.set(1.0 if s == state else 0.0, tags={"app": self.app_name, "replica": self.replica_id, "state": s})

    async def __init__(self, args: dict) -> None:
        marks = {cs.INIT_START: time.time(), cs.PROCESS_START: process_start_time()}
        pin_node_id()  # THAWLINE_CACHE_DIR may say {node_id} (first boot fetches its source there)
        self.args = LLMAppArgs.model_validate(args)
        ctx = serve.get_replica_context()
        self.app_name = ctx.app_name
        self.replica_id = ctx.replica_id.unique_id
        self._board = get_or_create_board()
        self._state = _replica_state_gauge()
        self._report(STARTING, cs.IMPORTS)
        self._host = None
        self._pool = None  # the node's warm pool, when the host came from it (parking goes back there)
        self._park_key = parked_key(self.app_name, self.args)
        try:
            self._host, how = await self._get_host()
            marks[cs.IMPORTS_DONE] = time.time()
            # engine_prepare, then engine_start_with_weights: both inside the host, one report
            self._report(STARTING, cs.ENGINE_PREPARE)
            started = await (self._host.adopt() if how == HOST_PARKED else self._start_engine())
        except BaseException:
            self._report(STOPPED)
            if self._host is not None:
                await self._host.close()
            raise
        # EngineHost.start returns its two marks among the engine facts
        marks[cs.ENGINE_PREPARED] = started.pop(cs.ENGINE_PREPARED)
        marks[cs.ENGINE_READY] = started.pop(cs.ENGINE_READY)
        self.marks = marks
        self.info = {"host": how, **started}
        self._report(WARM)
        if self.info.get("snapshot_url"):
            self._board.note_snapshot.remote(self.app_name)
        log.info("thawline: replica %s of %s warm (%s)", self.replica_id, self.app_name, self.info)

    async def _get_host(self):
        a = self.args
        if a.warm_pool_size:
            from serve_apps.llm.warm_pool import get_or_create_pool

            self._pool = pool = get_or_create_pool(ray.get_runtime_context().get_node_id(), a.warm_pool_size)
            # By actor id, not name: the pool stops the host once this replica's actor is dead.
            owner = ray.get_runtime_context().get_actor_id()
            if a.parks_engines:
                try:
                    parked = await pool.claim_parked.remote(self.app_name, self._park_key, owner)
                except ray.exceptions.RayError as e:
                    log.warning("thawline: warm pool unavailable (%s); no parked engine", e)
                    parked = None
                if parked:
                    return _PooledHost(parked[0]), HOST_PARKED
            try:
                claimed = await asyncio.wait_for(pool.claim.remote(POOL_PENDING_WAIT_S, owner),
                                                 POOL_PENDING_WAIT_S + 5)
            except (asyncio.TimeoutError, ray.exceptions.RayError) as e:
                log.warning("thawline: warm pool unavailable (%s); importing in the replica", e)
                claimed = None
            if claimed:
                return _PooledHost(claimed[0]), HOST_POOLED
        # No pooled host ready: import here (the cold start pays for it).
        return await asyncio.to_thread(_LocalHost), HOST_OWN

    def _spec(self, *, snapshot_url: str | None = None, capture: CaptureSpec | None = None,
              accelerator: dict | None = None, gpu_ids: list[str] | None = None) -> EngineSpec:
        """The EngineSpec for the host (see spec.py: placement group and runtime env ride as the
        very objects Ray handed the replica). The replica's runtime env goes along because a
        pooled host runs under the env of whichever app created the pool, not this app's."""
        a = self.args
        gpu = a.accelerator == "gpu"
        return EngineSpec(served_model_id=a.served_model_id, overrides=effective_engine_overrides(a),
                          verify=a.verify_checksums, snapshot_url=snapshot_url, capture=capture,
                          accelerator=accelerator, gpu_ids=gpu_ids,
                          runtime_env=ray.get_runtime_context().runtime_env,
                          placement_group=ray.util.get_current_placement_group() if gpu else None,
                          adapters=adapter_spec(a))

    async def _start_engine(self) -> dict:
        a = self.args
        # vLLM version, overrides and accelerator: a snapshot made under others is never restored
        # as is (first_boot.committed_snapshot: re-capture, or refuse in one line).
        identity, gpu_ids, ahead = await asyncio.gather(asyncio.to_thread(engine_identity, a), bundle_gpu_ids(a),
                                                        self._resolved_ahead())
        accelerator = identity.accelerator.model_dump()
        url = use_resolved(a, identity, ahead)
        resolved_by = "router" if url is not None else "replica"
        if url is None:
            url = await asyncio.to_thread(committed_snapshot, a, identity)
        if url is None:
            # Snapshot on first boot: one engine boot on the source writes the snapshot (if this
            # replica wins the claim of its id) and then serves; started["first_boot"] says which.
            source = await asyncio.to_thread(local_source, a.model_source)
            name, sid = first_boot_ref(a, identity.digest)
            t0 = time.time()
            started = await self._host.start(self._spec(accelerator=accelerator, gpu_ids=gpu_ids, capture=CaptureSpec(
                source_dir=str(source), tp=a.tensor_parallel_size, store_url=a.snapshot_store,
                name=name, snapshot_id=sid)))
            log.info("thawline: first boot (%s) up in %.1f s%s", started.get("first_boot"), time.time() - t0,
                     f", wrote {started['snapshot_url']}" if started.get("snapshot_url") else "")
            return started
        started = await self._host.start(self._spec(snapshot_url=url, accelerator=accelerator, gpu_ids=gpu_ids))
        return {**started, "snapshot_url": url, "snapshot_resolved_by": resolved_by}

    async def _resolved_ahead(self) -> dict | None:
        """The router's resolution of snapshot_url (snapshot_ahead.py), if the board has one."""
        if not self.args.snapshot_url:
            return None
        try:
            return await self._board.resolved_snapshot.remote(self.app_name)
        except ray.exceptions.RayError as e:
            log.warning("thawline: readiness board unavailable (%s); resolving the snapshot here", e)
            return None

    # -- handle methods ------------------------------------------------------------------------

    async def ready(self) -> dict:
        """Answered once the engine is up (Serve routes nothing to a replica still in __init__)."""
        return {"replica_id": self.replica_id, "marks": self.marks, "info": self.info, "pid": os.getpid()}

    async def generate(self, request: dict) -> dict:
        return await self._host.generate(request)

    async def generate_stream(self, request: dict) -> AsyncIterator[dict]:
        async for chunk in self._host.generate_stream(request):
            yield chunk

    async def adapters(self) -> dict | None:
        """The adapters this replica's engine has loaded (adapter_host.HostAdapters.describe)."""
        return await self._host.adapters()

    async def unload_idle_adapters(self) -> list[str]:
        """Unload adapters idle past idle_unload_s now (the host also does it on its own)."""
        return await self._host.unload_idle_adapters()

    async def __del__(self) -> None:
        # Serve awaits an async __del__ when it stops the replica (scale down, redeploy).
        board, host = getattr(self, "_board", None), getattr(self, "_host", None)
        if board is not None:
            self._report(STOPPED)
        if host is not None:
            self._host = None
            if isinstance(host, _PooledHost) and self.args.parks_engines and getattr(self, "marks", None):
                await host.park(self._pool, self.app_name, self._park_key, ray.get_runtime_context().get_actor_id(),
                                int(self.args.parked_memory_gb * 1e9))
            else:
                await host.close()
