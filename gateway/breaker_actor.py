"""The breaker state shared by all gateway replicas: one named Ray actor.

Why an actor and not per-replica breakers: with N replicas, per-replica breakers each need their
own N failures before they stop sending traffic to a dead target, i.e. N times the damage. Why
not a remote call per request: the hot path must stay local. So each replica keeps a local
mirror (`BreakerSet`), decides locally, and every `sync_interval_s` pushes its batch of outcomes
and adopts the actor's merged states. The actor holds only small dicts, so one actor is enough
(traffic to it is one call per replica per interval, independent of request rate).

Half-open: each replica lets one probe through once the cooldown has passed, so with N replicas
up to N probes reach a recovering target at once (not one): the price of deciding locally.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from gateway.breaker import BreakerSet
from gateway.config import BreakerConfig
from gateway.names import get_or_create_actor

log = logging.getLogger("thawline.gateway")


class BreakerBoard:
    """The authority's state: a plain class (no Ray), made the named actor by BreakerClient.
    `clock` is the board's monotonic clock; replicas translate the snapshot's times by the
    `remote_now` it returns (BreakerSet.adopt)."""

    def __init__(self, cfg: dict, clock: Callable[[], float] = time.monotonic):
        self._set = BreakerSet(BreakerConfig.model_validate(cfg), clock)

    def sync(self, events: list[tuple[str, bool, float]]) -> tuple[dict[str, dict], float]:
        """Replay a replica's outcomes; return the merged states and the board's clock reading."""
        if events:
            self._set.apply_events(events)
        return self._set.snapshot(), self._set.clock()


class BreakerClient:
    """Per replica: local decisions, periodic exchange with the board."""

    def __init__(self, board_name: str, cfg: BreakerConfig):
        self.local = BreakerSet(cfg)
        self._cfg = cfg
        self._board = get_or_create_actor(BreakerBoard, board_name, cfg.model_dump(), max_restarts=-1)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.sync_interval_s)
            await self.sync_once()

    async def sync_once(self) -> None:
        events = self.local.take_pending()
        try:
            snaps, remote_now = await self._board.sync.remote(events)
        except Exception as e:  # the board restarts on its own (max_restarts); keep deciding locally
            log.warning("breaker sync failed (%s); using local breaker state", type(e).__name__)
            self.local.pending[:0] = events
            return
        self.local.adopt(snaps, time.monotonic(), remote_now)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            await asyncio.wait_for(self.sync_once(), 2.0)
        except Exception:  # shutting down: the board is best-effort here, outcomes are advisory
            pass
