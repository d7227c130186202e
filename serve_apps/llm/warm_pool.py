"""Per-node warm pool of model-less, pre-imported engine hosts that a new LLM replica claims.

A cold LLM replica would otherwise spend most of its start importing torch + vLLM, twice (its
own process and vLLM's EngineCore). A pooled host (serve_apps/llm/engine_host.EngineHost as an actor)
has done both before any request: imports in its process and a preloaded forkserver for the
EngineCore. The replica claims one on its own node, hands it the snapshot, and forwards
requests to it; when the replica stops it kills the host. A replica that dies without stopping
(crash, OOM kill, node agent kill) cannot: the pool remembers each claimed host's owner (the
replica's actor id, checked against the GCS actor table) and stops hosts whose owner is gone,
so a crashed replica's engine does not hold the node's memory forever. The bookkeeping is the
pure `ClaimBook` (serve_apps/llm/host_claims.py); this actor only supplies the liveness check.

A replica of any TP degree claims one host, and that host runs the whole TP group. On CPU
vLLM's multiprocessing executor forks the rank workers under the host's EngineCore. On GPU the
replica hands over its placement group and runtime env: vLLM's Ray executor starts one rank
worker in each of the replica's bundles, with that bundle's GPU, and the host itself sees only
those GPUs (gpus.py).

Owners are tracked by actor id, never by name: inside a Serve replica the runtime context's
namespace is the job's, not the `serve` namespace the replica is registered in, so a name looked
up there is never found and every claimed host would be reaped at once.

Hosts reserve no Ray resources while idle (num_cpus=0, no GPU): the resources they use once
claimed are the claiming replica's placement-group bundles, one per TP rank. The pool refills
after a delay, so the refill's imports do not compete for CPU with the cold start that just
claimed a host.

A pool on a worker node retires once unused for $THAWLINE_WARM_POOL_RETIRE_S (default 60 s):
Ray counts any live actor as work, so a pool that stayed would keep its idle node from ever
being removed by the autoscaler. The LLM router starts a pool again when a node joins
(prewarm.py), and a replica landing on a node without one creates it.

Parked engines (apps with `parked_memory_gb` > 0): a replica that scales down hands its started
engine back (`park`) instead of stopping it. The pool keeps it within the node's host-memory
budget (parked_book.ParkedBook, least recently used evicted), lends it to the app's router,
which answers requests from it while the app is at zero replicas (`lend_parked`), and hands it to
the next replica of the same app (`claim_parked`), which then starts no engine. The pool tells
the ReadinessBoard how many engines each app has parked here, so routers find them and
`thawline status` shows the tier. A retiring pool stops its parked engines too.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gateway.names import get_or_create_actor, warm_pool_name
from serve_apps.llm.host_claims import ClaimBook
from serve_apps.llm.parked_book import ParkedBook

log = logging.getLogger("thawline.serve")

REFILL_DELAY_S = 20.0
REAP_INTERVAL_S = 5.0  # how often the pool checks that the owners of claimed hosts still live
HOST_SHUTDOWN_TIMEOUT_S = 15.0
PARKED_RECONCILE_S = 10.0  # how often parked engines are checked against their app's current args
# Seconds a pool on a worker node outlives its last claimed host. Every live actor, even one
# that reserves nothing, makes Ray count its node as busy ("Busy workers on node"), so a pool
# that stayed forever would keep an idle engine node, and its GPUs, from ever scaling down.
# Keep it below the cluster's idle_timeout_minutes. The head's pool never retires (the head
# never scales down).
RETIRE_ENV = "THAWLINE_WARM_POOL_RETIRE_S"
RETIRE_AFTER_S = 60.0
HEAD_RESOURCE = "node:__internal_head__"


def _host_actor(node_id: str):
    from serve_apps.llm.engine_host import EngineHost
    from serve_apps.llm.zygote import worker_runtime_env

    options = {"num_cpus": 0, "max_concurrency": 1000,
               "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}
    # On a node whose zygote is up (started before the node joined), the host's process is a
    # fork of it: its imports are done already (serve_apps/llm/zygote.py).
    runtime_env = worker_runtime_env(node_id)
    if runtime_env is not None:
        options["runtime_env"] = runtime_env
    return ray.remote(EngineHost).options(**options).remote()


async def stop_host(host) -> None:
    """Shut a host's engine down cleanly (its EngineCore is a forkserver child, which a bare kill
    of the host would orphan), then kill the host actor. Never raises."""
    try:
        await asyncio.wait_for(host.shutdown.remote(), HOST_SHUTDOWN_TIMEOUT_S)
    except Exception as e:  # still kill the host; say why the clean shutdown failed
        log.warning("thawline: engine host shutdown failed: %s", e)
    finally:
        try:
            ray.kill(host, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


async def host_stream(host, request: dict):
    """An engine host actor's generate_stream, chunk by chunk (async iterator of chunk dicts)."""
    async for ref in host.generate_stream.options(num_returns="streaming").remote(request):
        yield await ref


async def _host_stopped(host) -> bool:
    """True when the host actor is already dead; a host too busy to answer counts as alive."""
    try:
        await asyncio.wait_for(host.describe.remote(), HOST_SHUTDOWN_TIMEOUT_S)
        return False
    except ray.exceptions.RayActorError:
        return True
    except asyncio.TimeoutError:
        return False


def actor_alive(actor_id: str) -> bool:
    """Whether the GCS still knows `actor_id` as a live (or restarting) actor. No dashboard
    needed: this reads the GCS actor table directly."""
    from ray._private.state import actors

    info = actors(actor_id=actor_id)
    return bool(info) and info.get("State") not in ("DEAD",)


class WarmPool:
    """Keeps `size` ready hosts on one node. Async actor: claim() never blocks behind a refill."""

    def __init__(self, node_id: str, size: int, refill_delay_s: float = REFILL_DELAY_S,
                 reap_interval_s: float = REAP_INTERVAL_S, retire_after_s: float | None = None) -> None:
        self.node_id = node_id
        self.size = size
        self.refill_delay_s = refill_delay_s
        self.reap_interval_s = reap_interval_s
        self._ready: list = []        # hosts whose constructor finished
        self._pending: set = set()   # hosts still importing
        self._claims = ClaimBook()   # claimed hosts by owner actor id
        self._parked = ParkedBook()  # started engines of apps at zero replicas
        self._reconcile_task = None
        self._board_handle = None  # the readiness board, where parked engines are reported
        self._claimed = 0
        self._refill_task = None
        self._reap_task = None
        self._became_ready = asyncio.Event()
        self.retire_after_s = float(os.environ.get(RETIRE_ENV, RETIRE_AFTER_S)) if retire_after_s is None else retire_after_s
        self._last_claim = time.monotonic()  # the idle clock starts at creation
        self._retire_task = None
        self._retired = False

    async def _fill(self) -> None:
        while len(self._ready) + len(self._pending) < self.size:
            host = _host_actor(self.node_id)
            self._pending.add(host)
            asyncio.get_running_loop().create_task(self._await_ready(host))

    async def _await_ready(self, host) -> None:
        try:
            await host.describe.remote()
            self._ready.append(host)
            self._became_ready.set()
        except Exception as e:  # a host that failed to import is useless: drop it, say why
            log.warning("warm-pool host on %s failed to start: %s", self.node_id, e)
        finally:
            self._pending.discard(host)

    async def ensure(self, size: int) -> dict:
        """Raise the pool to at least `size` (several apps may share a node's pool)."""
        self.size = max(self.size, size)
        if self._retired:
            return self.stats()
        # A claim has scheduled the delayed refill: filling now would import during the cold
        # start that claimed. An async actor does not run calls in the order they were sent, so
        # the ensure() a replica sends before its claim() often runs after it (seen in
        # bench/first_cold_start.py: the refill host started 1 s after the claim, not 20 s).
        if self._refill_task is None or self._refill_task.done():
            await self._fill()
        if self._retire_task is None and self.retire_after_s > 0:
            self._retire_task = asyncio.get_running_loop().create_task(self._retire_when_idle())
        return self.stats()

    async def claim(self, wait_s: float = 0.0, owner_actor_id: str | None = None):
        """A ready host (the caller owns it from now on), or None. With none ready but one still
        importing, wait up to `wait_s` for it: it is further along than a fresh import would be.
        owner_actor_id: the claiming replica's actor id (ray.get_runtime_context().get_actor_id());
        the pool stops the host once that actor is dead."""
        if self._retired:
            return None  # stopping: the caller imports itself (or asks the next pool)
        self._last_claim = time.monotonic()
        deadline = asyncio.get_running_loop().time() + wait_s
        while not self._ready and self._pending:
            self._became_ready.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self._became_ready.wait(), left)
            except asyncio.TimeoutError:
                break
        if not self._ready:
            return None
        host = self._ready.pop(0)
        self._claimed += 1
        if self._refill_task is None or self._refill_task.done():
            self._refill_task = asyncio.get_running_loop().create_task(self._delayed_fill())
        if owner_actor_id is not None:
            self._claims.add(host, owner_actor_id)
            if self._reap_task is None or self._reap_task.done():
                self._reap_task = asyncio.get_running_loop().create_task(self._reap())
        return [host]  # wrapped: a bare handle in a return value would be resolved differently

    # -- parked engines ----------------------------------------------------------------------------

    async def park(self, app: str, key: str, wrapped_host: list, owner_actor_id: str, nbytes: int,
                   budget_bytes: int) -> bool:
        """A scaling-down replica hands its started engine back: it stays started, parked under
        `key`, within `budget_bytes` of parked engines on this node (LRU evicted and stopped).
        True when it was kept."""
        host = wrapped_host[0]
        for claim in self._claims.all():
            if claim.owner == owner_actor_id and claim.host._actor_id == host._actor_id:
                self._claims.forget(claim)  # no longer the replica's: its death must not reap it
        self._last_claim = time.monotonic()
        evicted = self._parked.drop_stale(app, key)  # parked under the app's old args: never adopted
        # a retiring pool keeps nothing: the node is on its way down
        evicted += [host] if self._retired else self._parked.park(app, key, host, nbytes, budget_bytes)
        if evicted:
            log.info("thawline: stopping %d parked engine(s) on %s (parked_memory_gb budget %.2f GB, "
                     "this one %.2f GB)", len(evicted), self.node_id, budget_bytes / 1e9, nbytes / 1e9)
        await asyncio.gather(*(stop_host(h) for h in evicted))
        self._report_parked(app)
        if self._reconcile_task is None or self._reconcile_task.done():
            self._reconcile_task = asyncio.get_running_loop().create_task(self._reconcile_parked())
        return all(h is not host for h in evicted)

    async def _reconcile_parked(self) -> None:
        """While engines are parked here: stop those whose app is gone or redeployed with other
        args (the board's current key for the app is None or another), so a deleted app's engines
        do not hold this node's memory until the budget or the pool's retirement ends them."""
        board = self._board()
        while self._parked:
            await asyncio.sleep(PARKED_RECONCILE_S)
            for app in self._parked.apps():
                try:
                    key = await board.current_parked_key.remote(app)
                except Exception as e:  # noqa: BLE001 - the board restarts: keep them this round
                    log.debug("parked reconcile: board unavailable: %s", e)
                    continue
                stale = self._parked.drop_stale(app, key)
                if stale:
                    log.info("thawline: stopping %d parked engine(s) of %s on %s (app %s)", len(stale), app,
                             self.node_id, "gone" if key is None else "redeployed")
                    await asyncio.gather(*(stop_host(h) for h in stale))
                    self._report_parked(app)

    async def claim_parked(self, app: str, key: str, owner_actor_id: str):
        """The newest parked engine for `key`, now the claiming replica's, or None."""
        host = self._parked.take(key)
        if host is None:
            return None
        self._last_claim = time.monotonic()
        self._claims.add(host, owner_actor_id)
        if self._reap_task is None or self._reap_task.done():
            self._reap_task = asyncio.get_running_loop().create_task(self._reap())
        self._report_parked(app)
        return [host]

    def lend_parked(self, key: str):
        """A parked engine for `key` that stays parked (the router answers from it while the app
        is at zero replicas), or None."""
        host = self._parked.lend(key)
        if host is not None:
            self._last_claim = time.monotonic()
        return None if host is None else [host]

    def _board(self):
        """The readiness board's handle, looked up once (a GCS call) and kept."""
        if self._board_handle is None:
            from gateway.readiness import get_or_create_board

            self._board_handle = get_or_create_board()
        return self._board_handle

    def _report_parked(self, app: str) -> None:
        self._board().record_parked.remote(app, self.node_id, self._parked.counts(app))

    async def _reap(self) -> None:
        """Stop claimed hosts whose owner died. A replica that stopped cleanly killed its host
        already: its claim is dropped without counting it as reaped."""
        while self._claims:
            await asyncio.sleep(self.reap_interval_s)
            for claim in await asyncio.to_thread(self._claims.orphans, actor_alive):
                if await _host_stopped(claim.host):
                    self._claims.forget(claim)  # the replica stopped it on its way out (the normal case)
                    continue
                log.info("thawline: owner %s of a claimed engine host is gone; stopping the host", claim.owner)
                await stop_host(claim.host)
                self._claims.reaped(claim)

    async def _retire_when_idle(self) -> None:
        """Stop the hosts and this pool once, for retire_after_s, no host has been claimed, held
        or importing, so the node can go idle. Never on the head. The clock does not run while a
        host imports: a pool started when its node joined is waited for by the replica the node
        came up for, which may arrive before the import is done."""
        if await asyncio.to_thread(_is_head, self.node_id):
            return
        while True:
            await asyncio.sleep(min(5.0, max(0.5, self.retire_after_s / 4)))
            if self._claims or self._pending:
                self._last_claim = time.monotonic()  # a replica uses a host here, or one is coming
            elif time.monotonic() - self._last_claim >= self.retire_after_s:
                break
        self._retired = True
        log.info("thawline: warm pool on %s unused for %.0f s; stopping it so the node can scale down",
                 self.node_id, self.retire_after_s)
        if self._refill_task is not None:
            self._refill_task.cancel()
        hosts, self._ready = self._ready, []
        parked_apps = self._parked.apps()
        hosts += self._parked.drain()
        for app in parked_apps:
            self._report_parked(app)
        for host in list(self._pending):
            ray.kill(host, no_restart=True)
        await asyncio.gather(*(stop_host(h) for h in hosts))
        # The name is freed with the actor: a later replica here gets a fresh pool.
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def _delayed_fill(self) -> None:
        await asyncio.sleep(self.refill_delay_s)
        await self._fill()

    def claims(self) -> list[dict]:
        """The live claims: owner replica actor id and claimed host actor id (both hex)."""
        return [{"owner": c.owner, "host": c.host._actor_id.hex()} for c in self._claims.all()]

    def stats(self) -> dict:
        return {"node_id": self.node_id, "size": self.size, "ready": len(self._ready),
                "pending": len(self._pending), "claimed": self._claimed, **self._claims.stats(), **self._parked.stats()}


def _is_head(node_id: str) -> bool:
    return any(n.get("NodeID") == node_id and HEAD_RESOURCE in n.get("Resources", {}) for n in ray.nodes())


def get_or_create_pool(node_id: str, size: int):
    """The node's pool actor (created detached, pinned to the node); raised to `size`."""
    pool = get_or_create_actor(WarmPool, warm_pool_name(node_id), node_id, size, max_concurrency=1000,
                               scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    pool.ensure.remote(size)
    return pool
