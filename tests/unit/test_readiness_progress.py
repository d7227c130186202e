"""A cold start in progress, as clients see it: the readiness board keeps the phase a starting
replica reports, and the gateway's /v1/models shows it on routes with a local target (what
`thawline chat` prints while it waits)."""
from __future__ import annotations

import hashlib

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.handle_ingress import call_asgi
from gateway.readiness import Board

KEY = "sk-progress"


def test_board_reports_the_phase_of_the_oldest_starting_replica():
    now = [100.0]
    b = Board(clock=lambda: now[0])
    b.report("app", "r1", "starting", "imports")
    now[0] = 103.0
    b.report("app", "r1", "starting", "engine_prepare")
    b.report("app", "r2", "starting", "imports")
    now[0] = 105.0
    got = b.get("app")
    assert got["state"] == "warming" and got["phase"] == "engine_prepare"
    assert got["phase_s"] == 2.0 and got["starting_s"] == 5.0
    b.report("app", "r1", "warm")
    assert "phase" not in b.get("app") and b.get("app")["state"] == "warm"


def _gateway() -> Gateway:
    cfg = parse_config({
        "providers": {"local": {"type": "serve", "app": "tiny-llm"},
                      "up": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "routes": {"tiny": {"targets": [{"provider": "local", "model": "tiny"}, {"provider": "up", "model": "m"}]},
                   "hosted": {"targets": [{"provider": "up", "model": "m"}]}},
        "keys": [{"id": "k", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
    })
    return Gateway(cfg, limits=None, costs=None)


async def test_models_carry_a_local_routes_readiness_without_its_replica_seconds():
    gw = _gateway()
    req = {"method": "GET", "path": "/v1/models", "headers": {"authorization": f"Bearer {KEY}"}, "body": None}
    before = {m["id"]: m for m in (await call_asgi(gw, req))["body"]["data"]}
    assert "thawline" not in before["tiny"]          # not polled yet: nothing claimed
    gw.providers["local"]._state = {"state": "warming", "warm_replicas": 0, "replica_seconds": 9.0,
                                    "phase": "engine_prepare", "phase_s": 1.5, "starting_s": 4.0}
    models = {m["id"]: m for m in (await call_asgi(gw, req))["body"]["data"]}
    assert models["tiny"]["thawline"] == {"target": "tiny/0:local/tiny", "app": "tiny-llm", "state": "warming",
                                          "warm_replicas": 0, "phase": "engine_prepare", "phase_s": 1.5, "starting_s": 4.0}
    assert "thawline" not in models["hosted"]
    await gw.shutdown()


async def test_a_parked_app_is_not_cold_to_spillover_and_clients_see_its_tier():
    gw = _gateway()
    local = gw.providers["local"]
    local._state = {"state": "cold", "warm_replicas": 0, "replica_seconds": 0.0, "parked": 0, "tier": "cached"}
    assert local.is_cold(), "no replica and nothing parked: spill over while it starts"
    local._state = {"state": "cold", "warm_replicas": 0, "replica_seconds": 0.0, "parked": 1, "tier": "parked"}
    assert not local.is_cold(), "a parked engine answers within a second: no reason to spill over"
    req = {"method": "GET", "path": "/v1/models", "headers": {"authorization": f"Bearer {KEY}"}, "body": None}
    models = {m["id"]: m for m in (await call_asgi(gw, req))["body"]["data"]}
    assert models["tiny"]["thawline"]["tier"] == "parked" and "parked" not in models["tiny"]["thawline"]
    await gw.shutdown()
