"""Admin-managed keys on a shared fsspec store (two in-process gateways stand for two replicas),
route/key limit changes, and gateway.yaml reconfigure in place. No Ray."""
from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import httpx
import pytest

from cluster.cli.keys import admin_url, limits_body
from gateway.app import Gateway
from gateway.config import parse_config
from gateway.key_records import KeyRecordStore, digest, key_from_record, key_record, new_secret, public_view
from gateway.config import KeyConfig

ADMIN = "adm-key"


def cfg(url: str, **extra) -> dict:
    return {"providers": {"oa": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9"}},
            "routes": {"r1": {"targets": [{"provider": "oa", "model": "m"}]},
                       "r2": {"targets": [{"provider": "oa", "model": "m"}]}},
            "keys": [{"id": "static", "sha256": hashlib.sha256(b"static-secret").hexdigest()}],
            "key_store": {"url": url, "poll_interval_s": 0.1},
            "server": {"admin_key_sha256": hashlib.sha256(ADMIN.encode()).hexdigest()}, **extra}


class FakeLimits:
    budgets: dict = {}

    def __init__(self):
        self.calls = []

    def reconfigure(self, route_limits, key_limits, budgets):
        self.calls.append((route_limits, key_limits, budgets))

    async def close(self):
        pass


def test_key_records_are_pure_and_secret_free():
    s = new_secret()
    rec = key_record(KeyConfig(id="a", sha256=digest(s), routes=["r1"]))
    assert s not in str(rec) and key_from_record(rec).sha256 == digest(s)
    assert "sha256" not in public_view(rec, "store")


def test_cli_helpers():
    assert admin_url("http://h:1/v1", "/v1/admin/keys") == "http://h:1/v1/admin/keys"
    assert limits_body(5, None, None, 1.5, None) == {"limits": {"rpm": 5}, "budget": {"usd_per_day": 1.5}}


def test_keys_created_revoked_rotated_across_replicas():
    url = f"memory://ks-{uuid.uuid4().hex[:8]}"

    async def main():
        g1 = Gateway(parse_config(cfg(url)), limits=None, costs=None)
        g2 = Gateway(parse_config(cfg(url)), limits=None, costs=None)
        c1 = httpx.AsyncClient(transport=httpx.ASGITransport(app=g1), base_url="http://g")
        c2 = httpx.AsyncClient(transport=httpx.ASGITransport(app=g2), base_url="http://g")
        adm = {"authorization": f"Bearer {ADMIN}"}
        try:
            await c2.get("/healthz")          # starts replica 2's poller
            assert (await c1.post("/v1/admin/keys", json={})).status_code == 401
            r = await c1.post("/v1/admin/keys", headers=adm, json={"id": "app1", "routes": ["r1"],
                                                                   "limits": {"rpm": 10}})
            assert r.status_code == 201, r.text
            secret = r.json()["key"]
            # the store holds the digest only
            assert secret not in str(KeyRecordStore(url).read_all().keys)
            hdr = {"authorization": f"Bearer {secret}"}
            t0 = time.monotonic()
            while (await c2.get("/v1/models", headers=hdr)).status_code != 200:
                assert time.monotonic() - t0 < 1.0, "key not live on replica 2 within 1 s"
                await asyncio.sleep(0.02)
            models = (await c2.get("/v1/models", headers=hdr)).json()["data"]
            assert [m["id"] for m in models] == ["r1"]
            ls = (await c1.get("/v1/admin/keys", headers=adm)).json()["data"]
            assert {k["id"]: k["source"] for k in ls} == {"static": "config", "app1": "store"}
            assert (await c1.post("/v1/admin/keys", headers=adm, json={"id": "app1"})).status_code == 409
            assert (await c1.delete("/v1/admin/keys/static", headers=adm)).status_code == 409
            # limits/budget change, live
            r = await c1.patch("/v1/admin/keys/app1", headers=adm, json={"limits": {"rpm": 3},
                                                                        "budget": {"usd_per_day": 2}})
            assert r.status_code == 200 and r.json()["limits"] == {"rpm": 3}
            assert (await c1.patch("/v1/admin/keys/app1", headers=adm, json={"limits": {"rpm": 0}})).status_code == 400
            assert (await c1.patch("/v1/admin/routes/r2", headers=adm, json={"limits": {"tpm": 100}})).status_code == 200
            # rotate: the old secret stops, the new one works
            new = (await c1.post("/v1/admin/keys/app1/rotate", headers=adm)).json()["key"]
            t0 = time.monotonic()
            while (await c2.get("/v1/models", headers=hdr)).status_code != 401:
                assert time.monotonic() - t0 < 1.0
                await asyncio.sleep(0.02)
            assert (await c2.get("/v1/models", headers={"authorization": f"Bearer {new}"})).status_code == 200
            # revoke
            assert (await c1.delete("/v1/admin/keys/app1", headers=adm)).status_code == 200
            t0 = time.monotonic()
            while (await c2.get("/v1/models", headers={"authorization": f"Bearer {new}"})).status_code != 401:
                assert time.monotonic() - t0 < 1.0, "revoked key still works on replica 2 after 1 s"
                await asyncio.sleep(0.02)
            assert (await c1.delete("/v1/admin/keys/app1", headers=adm)).status_code == 404
        finally:
            await g1.shutdown()
            await g2.shutdown()

    asyncio.run(main())


def test_limits_from_store_and_reconfigure_in_place():
    url = f"memory://ks-{uuid.uuid4().hex[:8]}"

    async def main():
        lim = FakeLimits()
        g = Gateway(parse_config(cfg(url)), limits=lim, costs=None)
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=g), base_url="http://g")
        adm = {"authorization": f"Bearer {ADMIN}"}
        try:
            await c.patch("/v1/admin/routes/r1", headers=adm, json={"limits": {"rpm": 7}})
            assert lim.calls[-1][0]["r1"].rpm == 7
            routes_obj = g.routes
            new = cfg(url)
            new["routes"]["r3"] = {"targets": [{"provider": "oa", "model": "m2"}], "limits": {"rpm": 9}}
            new["routes"]["r2"]["limits"] = {"tpm": 50}
            g.reconfigure(parse_config(new))
            assert g.routes is routes_obj and "r3" in g.routes    # same dict: handlers see the change
            rl = lim.calls[-1][0]
            assert rl["r1"].rpm == 7 and rl["r2"].tpm == 50 and rl["r3"].rpm == 9   # store override kept
        finally:
            await g.shutdown()

    asyncio.run(main())


def test_admin_without_store_is_404():
    async def main():
        c = cfg("memory://x")
        del c["key_store"]
        g = Gateway(parse_config(c), limits=None, costs=None)
        cl = httpx.AsyncClient(transport=httpx.ASGITransport(app=g), base_url="http://g")
        r = await cl.get("/v1/admin/keys", headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "key_store_not_configured"
        await g.shutdown()
    asyncio.run(main())
