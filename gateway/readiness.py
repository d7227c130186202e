"""ReadinessBoard: the cold/warm state of each LLM app, readable without waking the model.

LLM replicas report `report(app, replica_id, state)` with state in starting | warm | stopped;
the gateway reads `get(app) -> {"state": "cold"|"warming"|"warm", "warm_replicas": int,
"replica_seconds": float}` (docs/INTERFACES.md). `replica_seconds` is the replica time the app
has used so far (starting + warm, all replicas, running ones counted up to now): what a
scaled-to-zero app costs, in replica units.

`Board` is the pure state machine (clock injected, no Ray); `ReadinessBoard` is the plain class
of the named actor (gateway.names.READINESS_ACTOR in gateway.names.NAMESPACE) wrapping it,
made an actor at creation by `get_or_create_board`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal, get_args

from gateway.names import READINESS_ACTOR, get_or_create_actor

ReplicaState = Literal["starting", "warm", "stopped"]
_VALID = get_args(ReplicaState)


@dataclass
class _Replica:
    state: str
    born: float  # when it entered its first live state (for replica_seconds)


@dataclass
class _App:
    replicas: dict[str, _Replica] = field(default_factory=dict)
    spent_s: float = 0.0  # replica-seconds of replicas that have stopped
    last_cold_start: dict | None = None


class Board:
    """Per-app replica states. Stopped replicas are folded into `spent_s` and forgotten."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._apps: dict[str, _App] = {}

    def report(self, app: str, replica_id: str, state: ReplicaState) -> None:
        if state not in _VALID:
            raise ValueError(f"state must be one of {_VALID}, got {state!r}")
        now = self._clock()
        a = self._apps.setdefault(app, _App())
        r = a.replicas.get(replica_id)
        if state == "stopped":
            if r is not None:
                a.spent_s += now - r.born
                del a.replicas[replica_id]
            return
        a.replicas[replica_id] = _Replica(state, r.born if r is not None else now)

    def record_cold_start(self, app: str, timeline: dict) -> None:
        self._apps.setdefault(app, _App()).last_cold_start = dict(timeline)

    def get(self, app: str) -> dict:
        a = self._apps.get(app)
        if a is None:
            return {"state": "cold", "warm_replicas": 0, "replica_seconds": 0.0}
        now = self._clock()
        warm = sum(1 for r in a.replicas.values() if r.state == "warm")
        starting = sum(1 for r in a.replicas.values() if r.state == "starting")
        live = sum(now - r.born for r in a.replicas.values())
        state = "warm" if warm else ("warming" if starting else "cold")
        return {"state": state, "warm_replicas": warm, "replica_seconds": round(a.spent_s + live, 3)}

    def last_cold_start(self, app: str) -> dict | None:
        a = self._apps.get(app)
        return None if a is None else a.last_cold_start


class ReadinessBoard:
    """Actor wrapper around `Board` (see module doc). Methods are cheap dict operations."""

    def __init__(self) -> None:
        self._board = Board()

    def report(self, app: str, replica_id: str, state: str) -> None:
        self._board.report(app, replica_id, state)

    def record_cold_start(self, app: str, timeline: dict) -> None:
        self._board.record_cold_start(app, timeline)

    def get(self, app: str) -> dict:
        return self._board.get(app)

    def last_cold_start(self, app: str) -> dict | None:
        return self._board.last_cold_start(app)


def get_or_create_board():
    """The board actor handle; the first caller creates it (detached: it outlives any one app)."""
    return get_or_create_actor(ReadinessBoard, READINESS_ACTOR, max_restarts=-1)
