"""gateway.yaml changes apply whole or not at all (Gateway.reconfigure): a change whose key store
cannot be opened leaves the old
routes, providers and keys serving; a valid one applies every section, `ledger` included, and
closes the providers it replaced. Real in-process gateway, memory://, file:// and an unreachable
S3 endpoint. No Ray (the Serve replica's side: tests/integration/test_gateway_reconfigure_replica.py)."""
from __future__ import annotations

import asyncio
import copy
import time
import uuid

import httpx
import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.costs.ledger import Ledger
from gateway.costs.pricing import PriceBook
from gateway.costs.schema import LedgerRow
from gateway.costs.tracker import CostTracker
from gateway.providers.openai import OpenAIProvider
from tests.unit.test_gateway_key_admin import ADMIN, cfg

ADM = {"authorization": f"Bearer {ADMIN}"}


class Recorded(OpenAIProvider):
    closed = False

    async def close(self) -> None:
        self.closed = True
        await super().close()


def _tracker(c) -> CostTracker:
    return CostTracker(PriceBook(), ledger=Ledger(c.ledger.url))


def _gateway(raw: dict) -> Gateway:
    c = parse_config(raw)
    provs = {n: Recorded(n, p) for n, p in c.providers.items()}
    return Gateway(c, limits=None, costs=_tracker(c), providers=provs, costs_factory=_tracker)


def _changed(raw: dict, **edits) -> dict:
    new = copy.deepcopy(raw)
    new["routes"]["r3"] = {"targets": [{"provider": "oa", "model": "m3"}]}
    new["providers"]["oa"]["base_url"] = "http://127.0.0.1:10"
    new.update(edits)
    return new


async def _key(c: httpx.AsyncClient) -> str:
    r = await c.post("/v1/admin/keys", headers=ADM, json={"id": "app"})
    assert r.status_code == 201, r.text
    return r.json()["key"]


UNREACHABLE_S3 = {"url": "s3://nobucket/ks", "storage_options": {
    "key": "a", "secret": "b", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},   # nothing listens
    "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}}


@pytest.mark.parametrize("bad_store", [{"url": "nosuchproto://x"}, UNREACHABLE_S3], ids=["protocol", "unreachable"])
def test_a_key_store_that_does_not_open_changes_nothing(bad_store, tmp_path):
    raw = cfg(f"memory://ks-{uuid.uuid4().hex[:8]}", ledger={"url": f"file://{tmp_path}/l1"})

    async def main():
        g = _gateway(raw)
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=g), base_url="http://g")
        try:
            secret = await _key(c)
            before = (g.cfg, dict(g.providers), set(g.routes), g.key_store, g.costs)
            with pytest.raises(Exception):
                g.reconfigure(parse_config(_changed(raw, key_store=bad_store, ledger={"url": f"file://{tmp_path}/l2"})))
            assert (g.cfg, dict(g.providers), set(g.routes), g.key_store, g.costs) == before
            assert not any(p.closed for p in g.providers.values())
            models = await c.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
            assert models.status_code == 200 and {m["id"] for m in models.json()["data"]} == {"r1", "r2"}
        finally:
            await g.shutdown()
    asyncio.run(main())


def test_a_valid_change_applies_whole_and_closes_what_it_replaced(tmp_path):
    ks = f"memory://ks-{uuid.uuid4().hex[:8]}"
    raw = cfg(ks, ledger={"url": f"file://{tmp_path}/l1"})
    for t in raw["routes"].values():
        t["targets"][0].update(timeout_s=0.05, first_token_timeout_s=0.05)   # a short grace to close

    async def main():
        g = _gateway(raw)
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=g), base_url="http://g")
        try:
            secret = await _key(c)
            old_oa, old_costs = g.providers["oa"], g.costs
            old_costs.ledger.append([LedgerRow(key_id="app", route="r1", target="oa", model="m", cost_usd=3.0,
                                               pricing="table").to_dict()])
            new_ks = f"file://{tmp_path}/ks2"
            g.reconfigure(parse_config(_changed(raw, key_store={"url": new_ks, "poll_interval_s": 0.1},
                                                ledger={"url": f"file://{tmp_path}/l2"})))
            assert "r3" in g.routes and g.providers["oa"] is not old_oa
            assert g.costs is not old_costs and g.costs.ledger.url == f"file://{tmp_path}/l2"
            assert g.key_store.fs.protocol[0] == "file"
            # the old store's key is not in the new store: it stops working at once
            assert (await c.get("/v1/models", headers={"authorization": f"Bearer {secret}"})).status_code == 401
            t0 = time.monotonic()
            while not old_oa.closed:
                assert time.monotonic() - t0 < 10, "replaced provider never closed"
                await asyncio.sleep(0.02)
            # the old tracker was closed: its rows are in the old ledger
            assert sum(r["cost_usd"] for r in Ledger(f"file://{tmp_path}/l1").query("key")) == 3.0
        finally:
            await g.shutdown()
    asyncio.run(main())
