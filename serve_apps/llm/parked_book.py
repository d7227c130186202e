"""ParkedBook: the started engines a node's warm pool keeps for apps at zero replicas.

A parked engine is an engine host whose replica scaled down: its engine stays started (weights
and KV cache in the host's processes, no Ray resource reserved), so the app's router can answer
the next request from it at once and the next replica adopts it instead of starting another
engine. Engines are keyed by `parked_key` (the app and its args: only a replica of the same app,
configured the same way, may adopt one) and kept within the node's host-memory budget,
least recently used evicted first.

Pure bookkeeping (no Ray): the pool actor (warm_pool.WarmPool) stops what this book evicts
(tests/unit/test_llm_parked_book.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(eq=False, slots=True)
class ParkedEngine:
    app: str
    key: str
    host: Any          # the EngineHost actor handle
    nbytes: int        # host memory its processes hold (PSS sum, host_memory.py; measured when it parked)
    used_at: float     # when it parked, was lent or served last (the LRU clock)


class ParkedBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._engines: list[ParkedEngine] = []
        self.evicted_count = 0

    def __bool__(self) -> bool:
        return bool(self._engines)

    def park(self, app: str, key: str, host: Any, nbytes: int, budget_bytes: int) -> list[Any]:
        """Keep `host` parked under `key`; returns the hosts to stop (least recently used first)
        so that the engines kept fit `budget_bytes`. An engine bigger than the whole budget is not
        kept: the list is then `[host]` alone."""
        if nbytes > budget_bytes:
            self.evicted_count += 1
            return [host]
        self._engines.append(ParkedEngine(app, key, host, int(nbytes), self._clock()))
        evicted: list[Any] = []
        while self.total_bytes() > budget_bytes:
            oldest = min((e for e in self._engines if e.host is not host), key=lambda e: e.used_at)
            self._engines.remove(oldest)
            self.evicted_count += 1
            evicted.append(oldest.host)
        return evicted

    def drop_stale(self, app: str, key: str | None) -> list[Any]:
        """Forget `app`'s engines parked under another key than `key` (the app was redeployed with
        other args: no replica will ever adopt them), or all of them for None (the app is gone);
        returns their hosts, to stop."""
        stale = [e for e in self._engines if e.app == app and e.key != key]
        for e in stale:
            self._engines.remove(e)
        self.evicted_count += len(stale)
        return [e.host for e in stale]

    def _newest(self, key: str) -> ParkedEngine | None:
        matches = [e for e in self._engines if e.key == key]
        return max(matches, key=lambda e: e.used_at) if matches else None

    def take(self, key: str) -> Any | None:
        """A parked engine for `key`, no longer parked (a replica adopts it), or None."""
        e = self._newest(key)
        if e is None:
            return None
        self._engines.remove(e)
        return e.host

    def lend(self, key: str) -> Any | None:
        """A parked engine for `key` that stays parked (the router answers from it while a replica
        starts); its LRU clock restarts. None when there is none."""
        e = self._newest(key)
        if e is None:
            return None
        e.used_at = self._clock()
        return e.host

    def drain(self) -> list[Any]:
        """Every parked host, forgotten (the pool is stopping)."""
        hosts = [e.host for e in self._engines]
        self._engines.clear()
        return hosts

    def apps(self) -> set[str]:
        return {e.app for e in self._engines}

    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self._engines)

    def counts(self, app: str) -> dict[str, int]:
        """Parked engines of `app`, per key."""
        out: dict[str, int] = {}
        for e in self._engines:
            if e.app == app:
                out[e.key] = out.get(e.key, 0) + 1
        return out

    def stats(self) -> dict:
        return {"parked": len(self._engines), "parked_bytes": self.total_bytes(), "evicted": self.evicted_count}
