"""ReadinessBoard: the cold/warm state of each LLM app, readable without waking the model.

LLM replicas report `report(app, replica_id, state, phase=None)` with state in REPLICA_STATES
(starting | warm | stopped); the gateway reads `get(app) -> {"state": <one of APP_STATES: cold |
warming | warm>, "warm_replicas": int, "replica_seconds": float}` (docs/INTERFACES.md), plus, while
a cold start is in progress, `phase` / `phase_s` / `starting_s` of the oldest starting replica
(what `thawline chat` shows; phase names: gateway/cold_start_phases.py). `replica_seconds` is the replica time the app
has used so far (starting + warm, all replicas, running ones counted up to now): what a
scaled-to-zero app costs, in replica units.
Warm pools record the engines they keep parked for an app (`record_parked(app, node, {key: n})`,
serve_apps/llm/warm_pool.py); `parked_nodes(app, key)` tells the app's router where one is, and
`get` adds `parked` (engines) and `tier`, the fastest way the app's next request is answered:
warm (a replica serves) | parked (a parked engine answers at once) | cached (a replica starts
from a snapshot already made) | cold (nothing known yet: the first replica may have to boot from
the source and write the snapshot).
The LLM router also records its node-join prewarm there (`record_prewarm(app, node, fields)`,
read back by `prewarm(app)`): when each node was seen, its pool ensured, its snapshot prefetched.

`Board` is the pure state machine (clock injected, no Ray); `ReadinessBoard` is the plain class
of the named actor (gateway.names.READINESS_ACTOR in gateway.names.NAMESPACE) wrapping it,
made an actor at creation by `get_or_create_board`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from gateway.names import READINESS_ACTOR, get_or_create_actor

# The state names, defined here only: the replica (serve_apps/llm/server.py) reports them, the
# gateway's serve provider, the CLI and the demo read them.
STARTING = "starting"  # a replica's constructor runs: its cold start is in progress
WARM = "warm"          # a replica serves; an app with one such replica is warm
STOPPED = "stopped"    # a replica is gone (scaled down, redeployed, or its start failed)
REPLICA_STATES = (STARTING, WARM, STOPPED)
ReplicaState = str  # one of REPLICA_STATES

COLD = "cold"          # an app with no live replica
WARMING = "warming"    # an app whose replicas are all still starting
APP_STATES = (COLD, WARMING, WARM)

# Tiers (`get(app)["tier"]`): how the app's next request will be answered, fastest first.
PARKED = "parked"      # a parked engine answers while a replica adopts it
CACHED = "cached"      # a replica starts an engine from a committed snapshot
TIERS = (WARM, PARKED, CACHED, COLD)


@dataclass
class _Replica:
    state: str
    born: float  # when it entered its first live state (for replica_seconds)
    phase: str | None = None  # the cold-start phase a starting replica is in (imports, restore, ...)
    phase_at: float = 0.0     # when it entered that phase


@dataclass
class _App:
    replicas: dict[str, _Replica] = field(default_factory=dict)
    spent_s: float = 0.0  # replica-seconds of replicas that have stopped
    last_cold_start: dict | None = None
    cold_starts: list[dict] = field(default_factory=list)  # the newest COLD_STARTS_KEPT, oldest first
    failed_starts: list[float] = field(default_factory=list)  # when replicas stopped before serving
    prewarm: dict[str, dict] = field(default_factory=dict)  # node id -> its prewarm events
    parked: dict[str, dict[str, int]] = field(default_factory=dict)  # node id -> {parked key: engines}
    parked_key: str | None = None  # the key the app's current router parks under (its args)
    parked_router: str | None = None  # the router replica that set it (only it may clear it)
    has_snapshot: bool = False  # a replica started from (or wrote) a committed snapshot
    resolved: dict | None = None  # the router's latest resolution of the app's snapshot_url
    adapters: tuple[str, ...] = ()  # the LoRA adapters of the app's model in its store (router's listing)


PREWARM_NODES_KEPT = 20  # the newest nodes' prewarm records; older ones are dropped
FAILED_STARTS_KEPT = 20  # the newest failed replica starts of an app
COLD_STARTS_KEPT = 20    # the newest cold starts of an app (the dashboard's history)


class Board:
    """Per-app replica states. Stopped replicas are folded into `spent_s` and forgotten."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._apps: dict[str, _App] = {}

    def report(self, app: str, replica_id: str, state: ReplicaState, phase: str | None = None) -> None:
        """`phase`: where a starting replica's cold start is now (shown while it happens)."""
        if state not in REPLICA_STATES:
            raise ValueError(f"state must be one of {REPLICA_STATES}, got {state!r}")
        now = self._clock()
        a = self._apps.setdefault(app, _App())
        r = a.replicas.get(replica_id)
        if state == STOPPED:
            if r is not None:
                a.spent_s += now - r.born
                del a.replicas[replica_id]
                if r.state == STARTING:  # its constructor failed (or it was stopped) before serving
                    a.failed_starts = [*a.failed_starts[-(FAILED_STARTS_KEPT - 1):], now]
            return
        a.replicas[replica_id] = _Replica(state, r.born if r is not None else now, phase,
                                          r.phase_at if r is not None and r.phase == phase else now)

    def record_cold_start(self, app: str, timeline: dict) -> None:
        """`timeline` of the replica that served (the router's; `marks` in time.time()). Adds
        `failed_starts`: replicas that stopped before serving since the request. Serve starts
        another replica after a failed one, and the served replica's own marks then put the
        failed attempt's seconds in serve_scheduling: this count says so."""
        a = self._apps.setdefault(app, _App())
        t_req = (timeline.get("marks") or {}).get("request")
        a.last_cold_start = dict(timeline)
        if t_req is not None:
            a.last_cold_start["failed_starts"] = sum(1 for t in a.failed_starts if t >= t_req)
        a.cold_starts = [*a.cold_starts[-(COLD_STARTS_KEPT - 1):], a.last_cold_start]

    def cold_starts(self, app: str) -> list[dict]:
        """The app's newest cold starts, newest first (each as `last_cold_start` was)."""
        a = self._apps.get(app)
        return [] if a is None else [dict(c) for c in reversed(a.cold_starts)]

    def record_prewarm(self, app: str, node_id: str, fields: dict) -> None:
        """Merge `fields` (timestamps and facts of the node-join prewarm, serve_apps/llm/prewarm.py)
        into the node's record."""
        nodes = self._apps.setdefault(app, _App()).prewarm
        nodes.setdefault(node_id, {"node_id": node_id}).update(fields)
        while len(nodes) > PREWARM_NODES_KEPT:
            del nodes[next(iter(nodes))]

    def prewarm(self, app: str) -> list[dict]:
        a = self._apps.get(app)
        return [] if a is None else [dict(r) for r in a.prewarm.values()]

    def record_parked(self, app: str, node_id: str, counts: dict[str, int]) -> None:
        """The engines a node's warm pool keeps parked for `app` now, per parked key."""
        a = self._apps.setdefault(app, _App())
        counts = {k: int(n) for k, n in counts.items() if n > 0}
        if counts:
            a.parked[node_id] = counts
            a.has_snapshot = True  # an engine ran: its snapshot exists
        else:
            a.parked.pop(node_id, None)

    def parked_nodes(self, app: str, key: str) -> list[str]:
        """Nodes whose pool has an engine parked under `key`."""
        a = self._apps.get(app)
        return [] if a is None else [n for n, counts in a.parked.items() if counts.get(key)]

    def note_snapshot(self, app: str) -> None:
        """The app restores a committed snapshot (its router knows from its args, a replica from
        its start): its next cold start is at worst `cached`."""
        self._apps.setdefault(app, _App()).has_snapshot = True

    def note_resolved_snapshot(self, app: str, record: dict) -> None:
        """The app's snapshot_url resolved by its router ahead of any request (shape:
        serve_apps/llm/snapshot_ahead.py); a starting replica uses it instead of resolving."""
        self._apps.setdefault(app, _App()).resolved = dict(record)

    def resolved_snapshot(self, app: str) -> dict | None:
        a = self._apps.get(app)
        return None if a is None or a.resolved is None else dict(a.resolved)

    def note_adapters(self, app: str, names) -> None:
        """The adapters the app's router listed in its store (serve_apps/llm/adapter_listing.py):
        what the gateway's /v1/models offers and what it answers 404 for without a call."""
        self._apps.setdefault(app, _App()).adapters = tuple(sorted(names))

    def adapters(self, app: str) -> list[str]:
        a = self._apps.get(app)
        return [] if a is None else list(a.adapters)

    def note_parked_key(self, app: str, key: str, router_id: str) -> None:
        """The key the app's router answers from (serve_apps/llm/args.parked_key): engines parked
        under another (the app's args before a redeploy) do not count toward its tier, and warm
        pools stop them (`current_parked_key`)."""
        a = self._apps.setdefault(app, _App())
        a.parked_key, a.parked_router = key, router_id

    def forget_parked_key(self, app: str, router_id: str) -> None:
        """The app's router stopped (app deleted or redeployed): pools stop the app's parked
        engines, unless a newer router already set its own key."""
        a = self._apps.get(app)
        if a is not None and a.parked_router == router_id:
            a.parked_key = a.parked_router = None

    def current_parked_key(self, app: str) -> str | None:
        """The key engines of `app` may stay parked under; None: none may (no router parks)."""
        a = self._apps.get(app)
        return None if a is None else a.parked_key

    def get(self, app: str) -> dict:
        a = self._apps.get(app)
        if a is None:
            return {"state": COLD, "warm_replicas": 0, "replica_seconds": 0.0, "parked": 0, "tier": COLD}
        now = self._clock()
        warm = sum(1 for r in a.replicas.values() if r.state == WARM)
        starting = sum(1 for r in a.replicas.values() if r.state == STARTING)
        live = sum(now - r.born for r in a.replicas.values())
        state = WARM if warm else (WARMING if starting else COLD)
        parked = sum(n for counts in a.parked.values() for k, n in counts.items()
                     if a.parked_key is None or k == a.parked_key)
        tier = WARM if warm else PARKED if parked else CACHED if a.has_snapshot else COLD
        out = {"state": state, "warm_replicas": warm, "replica_seconds": round(a.spent_s + live, 3),
               "parked": parked, "tier": tier}
        if not warm and starting:
            # the starting replica furthest along: its phase and since when (a cold start in progress)
            r = min((r for r in a.replicas.values() if r.state == STARTING), key=lambda r: r.born)
            out.update(phase=r.phase, phase_s=round(now - r.phase_at, 3), starting_s=round(now - r.born, 3))
        return out

    def last_cold_start(self, app: str) -> dict | None:
        a = self._apps.get(app)
        return None if a is None else a.last_cold_start


class ReadinessBoard:
    """Actor wrapper around `Board` (see module doc). Methods are cheap dict operations."""

    def __init__(self) -> None:
        self._board = Board()

    def report(self, app: str, replica_id: str, state: str, phase: str | None = None) -> None:
        self._board.report(app, replica_id, state, phase)

    def record_cold_start(self, app: str, timeline: dict) -> None:
        self._board.record_cold_start(app, timeline)

    def get(self, app: str) -> dict:
        return self._board.get(app)

    def last_cold_start(self, app: str) -> dict | None:
        return self._board.last_cold_start(app)

    def cold_starts(self, app: str) -> list[dict]:
        return self._board.cold_starts(app)

    def record_prewarm(self, app: str, node_id: str, fields: dict) -> None:
        self._board.record_prewarm(app, node_id, fields)

    def prewarm(self, app: str) -> list[dict]:
        return self._board.prewarm(app)

    def record_parked(self, app: str, node_id: str, counts: dict[str, int]) -> None:
        self._board.record_parked(app, node_id, counts)

    def parked_nodes(self, app: str, key: str) -> list[str]:
        return self._board.parked_nodes(app, key)

    def note_snapshot(self, app: str) -> None:
        self._board.note_snapshot(app)

    def note_parked_key(self, app: str, key: str, router_id: str) -> None:
        self._board.note_parked_key(app, key, router_id)

    def note_resolved_snapshot(self, app: str, record: dict) -> None:
        self._board.note_resolved_snapshot(app, record)

    def resolved_snapshot(self, app: str) -> dict | None:
        return self._board.resolved_snapshot(app)

    def forget_parked_key(self, app: str, router_id: str) -> None:
        self._board.forget_parked_key(app, router_id)

    def note_adapters(self, app: str, names) -> None:
        self._board.note_adapters(app, names)

    def adapters(self, app: str) -> list[str]:
        return self._board.adapters(app)

    def current_parked_key(self, app: str) -> str | None:
        return self._board.current_parked_key(app)


def get_or_create_board():
    """The board actor handle; the first caller creates it (detached: it outlives any one app)."""
    return get_or_create_actor(ReadinessBoard, READINESS_ACTOR, max_restarts=-1)
