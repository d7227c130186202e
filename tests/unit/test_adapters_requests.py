"""`<route>:<adapter>` requests through an in-process gateway (no Ray): the real serve provider
whose handle is testkit's FakeLLM in this process, a hosted fake beside it, the real limiter
client and broker, an in-memory ledger. Scope and existence 404s byte for byte, /v1/models,
fallback only to declared targets, per-adapter limits and budgets, usage by adapter."""
from __future__ import annotations

import asyncio
import hashlib
import json
from types import SimpleNamespace

import httpx
import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.costs.pricing import PriceBook
from gateway.costs.schema import ModelPrice
from gateway.costs.tracker import CostTracker
from gateway.limits.broker import LimitBroker
from gateway.limits.client import LimitClient
from gateway.llm_protocol import model_not_found
from gateway.providers.base import Provider, Response, Usage
from gateway.providers.serve import ServeProvider
from testkit.fake_llm import FakeLLM

ADMIN, ALL, ALICE, NONE, HOSTED = "tl-adm", "tl-all", "tl-alice", "tl-none", "tl-hosted"
SERVED = ["alice-v1", "alice-v2", "bob-v1", "bob-down", "bud-down", "carol-down"]
LISTED = SERVED + ["alice-stale"]           # the board lists one the app no longer has
MSG = [{"role": "user", "content": "hi"}]


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def config(adapters: dict | None = None) -> dict:
    return {
        "providers": {"local": {"type": "serve", "app": "lora-app"},
                      "oa": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9"}},
        "routes": {"tiny": {"targets": [{"provider": "local", "model": "tiny"}, {"provider": "oa", "model": "gpt-base"}],
                            "adapters": adapters if adapters is not None else {
                                "bob-down": {"fallback": [{"provider": "oa", "model": "ft-bob"}]},
                                "bud-down": {"budget": {"usd_per_day": 1.0},
                                             "fallback": [{"provider": "oa", "model": "ft-bud"}]}}},
                   "hosted": {"targets": [{"provider": "oa", "model": "gpt-base"}]}},
        "keys": [{"id": "all", "sha256": _sha(ALL)}, {"id": "alice", "sha256": _sha(ALICE), "adapters": ["alice-*"]},
                 {"id": "none", "sha256": _sha(NONE), "adapters": []},
                 {"id": "hosted-only", "sha256": _sha(HOSTED), "routes": ["hosted"]}],
        "server": {"admin_key_sha256": _sha(ADMIN)},
    }


class _Stream:
    def __init__(self, agen):
        self.agen = agen

    def __aiter__(self):
        return self.agen

    def cancel(self) -> None:
        pass


class LocalServe(ServeProvider):
    """The real serve provider; its DeploymentHandle is a FakeLLM in this process."""

    def __init__(self, name, cfg, app: FakeLLM, listed: list[str]):
        super().__init__(name, cfg)
        self.adapters = frozenset(listed)
        self._handle = self._stream_handle = SimpleNamespace(
            generate=SimpleNamespace(remote=app.generate),
            generate_stream=SimpleNamespace(remote=lambda req: _Stream(app.generate_stream(req))))

    async def start(self) -> None:      # no readiness poll (it needs Ray)
        return None


class Hosted(Provider):
    def __init__(self, name, cfg):
        super().__init__(name, cfg)
        self.calls: list[str] = []

    async def call(self, endpoint, body, target):
        self.calls.append(target.model)
        return Response({"id": "h", "object": "chat.completion", "created": 0, "model": target.model,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": f"hosted {target.model}"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}, Usage(3, 2))

    async def stream(self, endpoint, body, target):
        self.calls.append(target.model)
        base = {"id": "h", "object": "chat.completion.chunk", "created": 0, "model": target.model}
        yield {**base, "choices": [{"index": 0, "delta": {"content": f"hosted {target.model}"}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


class _Call:
    """What a Ray actor method's `.remote()` gives the limiter: awaitable, with `.future()`."""

    def __init__(self, coro):
        self.fut = asyncio.run_coroutine_threadsafe(coro, asyncio.get_running_loop())

    def future(self):
        return self.fut

    def __await__(self):
        return asyncio.wrap_future(self.fut).__await__()


class LocalBroker:
    def __init__(self):
        self.broker = LimitBroker()

    def __getattr__(self, name):
        return SimpleNamespace(remote=lambda *a: _Call(getattr(self.broker, name)(*a)))


def build(adapters: dict | None = None, *, limits: bool = False):
    cfg = parse_config(config(adapters))
    app = FakeLLM(adapters=SERVED)
    hosted = Hosted("oa", cfg.providers["oa"])
    prices = {"oa": {"ft-bud": ModelPrice(input_per_1m=1e6, output_per_1m=1e6)}}   # $1 a token
    costs = CostTracker(PriceBook(provider_overrides=prices))
    lim = LimitClient.from_config(cfg, broker=LocalBroker()) if limits else None
    gw = Gateway(cfg, limits=lim, costs=costs, providers={"local": LocalServe("local", cfg.providers["local"], app, LISTED),
                                                          "oa": hosted})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw), base_url="http://gw")
    return gw, client, app, hosted


def _hdr(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


async def _chat(client, key: str, model: str, **kw) -> httpx.Response:
    return await client.post("/v1/chat/completions", headers=_hdr(key), json={"model": model, "messages": MSG, **kw})


def _sse_text(r: httpx.Response) -> str:
    out = []
    for line in r.text.splitlines():
        if line.startswith("data: {"):
            for c in json.loads(line[6:]).get("choices") or []:
                out.append((c.get("delta") or {}).get("content") or "")
    return "".join(out)


def canonical(model: str) -> bytes:
    return json.dumps(model_not_found(model).body).encode()


@pytest.fixture
async def gw():
    gw, client, app, hosted = build()
    yield SimpleNamespace(gw=gw, client=client, app=app, hosted=hosted)
    await client.aclose()
    await gw.shutdown()


async def test_an_adapter_is_answered_by_the_serve_target_with_the_adapter(gw):
    r = await _chat(gw.client, ALL, "tiny:alice-v1")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello from alice-v1!"
    sent = gw.app.calls[-1]
    assert sent["adapter"] == "alice-v1" and sent["body"]["model"] == "tiny"   # the body names the base
    r = await _chat(gw.client, ALICE, "tiny:alice-v2", stream=True)
    assert r.status_code == 200 and _sse_text(r) == "Hello from alice-v2!"
    r = await gw.client.post("/v1/completions", headers=_hdr(ALL), json={"model": "tiny:bob-v1", "prompt": "x"})
    assert r.json()["choices"][0]["text"] == "Hello from bob-v1!"
    base = await _chat(gw.client, NONE, "tiny")
    assert base.json()["choices"][0]["message"]["content"] == "Hello from local!" and "adapter" not in gw.app.calls[-1]
    assert gw.hosted.calls == []


async def test_out_of_scope_and_missing_adapters_get_the_same_404(gw):
    calls = len(gw.app.calls)
    cases = [(ALICE, "tiny:bob-v1"),       # exists, outside alice-*
             (ALICE, "tiny:alice-nope"),   # in scope, does not exist
             (NONE, "tiny:alice-v1"),      # a key with adapters: []
             (ALL, "tiny:zed"),            # no such adapter, any key
             (ALL, "hosted:alice-v1"),     # a route without a serve target has no adapters
             (ALL, "nope:alice-v1"), (ALL, "nope")]
    for key, model in cases:
        for stream in (False, True):
            r = await _chat(gw.client, key, model, stream=stream)
            assert (r.status_code, r.content) == (404, canonical(model)), (key, model, stream)
    assert len(gw.app.calls) == calls, "a refused adapter reached the app (the listing is read locally)"
    # the app's own 404 for an adapter the (stale) listing still names: the same body
    for stream in (False, True):
        r = await _chat(gw.client, ALICE, "tiny:alice-stale", stream=stream)
        assert (r.status_code, r.content) == (404, canonical("tiny:alice-stale")), stream
    assert gw.app.calls[-1]["adapter"] == "alice-stale"
    # a route the key may not use stays a 403, adapter or not
    for model in ("tiny", "tiny:alice-v1"):
        r = await _chat(gw.client, HOSTED, model)
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed", model


async def test_models_lists_the_adapters_each_key_may_use(gw):
    async def ids(key):
        r = await gw.client.get("/v1/models", headers=_hdr(key))
        return [m["id"] for m in r.json()["data"]], r.json()["data"]

    alice, data = await ids(ALICE)
    assert alice == ["tiny", "tiny:alice-stale", "tiny:alice-v1", "tiny:alice-v2", "hosted"]
    assert {m["parent"] for m in data if ":" in m["id"]} == {"tiny"}
    assert (await ids(NONE))[0] == ["tiny", "hosted"]
    everyone = (await ids(ALL))[0]
    assert everyone == ["tiny", *(f"tiny:{n}" for n in sorted(LISTED)), "hosted"]


async def test_adapter_fallback_goes_only_to_declared_targets(gw):
    r = await _chat(gw.client, ALL, "tiny:bob-down")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hosted ft-bob"
    assert r.headers["x-thawline-target"] == "tiny:bob-down/0:oa/ft-bob"
    assert r.headers["x-thawline-fallbacks"].startswith("tiny/0:local/tiny=503")
    r = await _chat(gw.client, ALL, "tiny:bob-down", stream=True)
    assert r.status_code == 200 and _sse_text(r) == "hosted ft-bob"
    # no fallback declared: the serve target's failure is the answer, never the base's gpt-base
    for stream in (False, True):
        r = await _chat(gw.client, ALL, "tiny:carol-down", stream=stream)
        assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
        assert "carol-down" in r.json()["error"]["message"]
        assert r.headers["x-thawline-attempts"] == "1"
    assert gw.hosted.calls == ["ft-bob", "ft-bob"]


async def test_ledger_rows_carry_the_adapter_and_usage_groups_by_it(gw):
    for model in ("tiny:alice-v1", "tiny:alice-v1", "tiny:bob-down", "tiny"):
        assert (await _chat(gw.client, ALL, model)).status_code == 200
    r = await gw.client.get("/v1/usage?group_by=adapter", headers=_hdr(ADMIN))
    assert r.status_code == 200 and r.json()["group_by"] == "adapter"
    by = {g["group"]: g for g in r.json()["data"]}
    assert by["alice-v1"]["requests"] == 2 and by["bob-down"]["requests"] == 1 and by[None]["requests"] == 1
    rows = list(gw.gw.costs.ledger.memory)
    assert [(x["adapter"], x["target"], x["model"]) for x in rows if x["adapter"] == "bob-down"] == [
        ("bob-down", "oa", "ft-bob")]         # the fallback's row is the adapter's too
    assert (await gw.client.get("/v1/usage?group_by=nope", headers=_hdr(ADMIN))).status_code == 400
    ui = await gw.client.get("/ui", headers=_hdr(ADMIN))
    table = ui.text.split('data-table="adapters"')[1].split("</table>")[0]
    assert "alice-v1" in table and "bob-down" in table and "(base model)" in table


async def test_an_adapter_budget_stops_that_adapter_only(gw):
    r = await _chat(gw.client, ALL, "tiny:bud-down")      # $5 on its fallback: over its $1 a day
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hosted ft-bud"
    r = await _chat(gw.client, ALL, "tiny:bud-down")
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    assert "adapter 'tiny:bud-down'" in r.json()["error"]["message"]
    assert gw.gw.costs.period_spend("adapter:tiny:bud-down", "usd_day") == pytest.approx(5.0)
    for model in ("tiny:bob-down", "tiny:alice-v1", "tiny"):
        assert (await _chat(gw.client, ALL, model)).status_code == 200, model
    ui = await gw.client.get("/ui", headers=_hdr(ADMIN))
    assert "adapter:tiny:bud-down" in ui.text


async def test_adapter_limits_count_per_adapter_on_top_of_the_route():
    gw, client, app, _ = build({"alice-*": {"limits": {"rpm": 1}}, "alice-v2": {},
                                "bud-down": {"budget": {"usd_per_day": 1.0},
                                             "fallback": [{"provider": "oa", "model": "ft-bud"}]}}, limits=True)
    try:
        # the adapter's budget is a cell at the broker, leased for the worst case at admission
        assert (await _chat(client, ALL, "tiny:bud-down", max_tokens=8)).status_code == 200
        cell = gw.limits._broker.broker.pool.cells[("adapter:tiny:bud-down", "usd_day")]
        assert cell.limit == 10**9 and sum(cell.held.values()) + cell.spent() > 0
        r = await _chat(client, ALL, "tiny:bud-down", max_tokens=8)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        assert "adapter 'tiny:bud-down'" in r.json()["error"]["message"]
        assert (await _chat(client, ALL, "tiny:alice-v1")).status_code == 200
        r = await _chat(client, ALL, "tiny:alice-v1")
        assert r.status_code == 429 and "adapter 'tiny:alice-v1'" in r.json()["error"]["message"]
        assert (await _chat(client, ALL, "tiny:alice-stale")).status_code == 404   # its own rpm; then the app's 404
        assert (await _chat(client, ALL, "tiny:alice-v2")).status_code == 200      # exact entry: no limits
        assert (await _chat(client, ALL, "tiny:alice-v2")).status_code == 200
        for _ in range(3):
            assert (await _chat(client, ALL, "tiny")).status_code == 200
    finally:
        await client.aclose()
        await gw.shutdown()


async def test_admin_api_keys_carry_an_adapter_scope():
    import uuid

    cfg = config()
    cfg["key_store"] = {"url": f"memory://ks-{uuid.uuid4().hex[:8]}", "poll_interval_s": 0.1}
    gw, client, _, _ = build()
    gw.reconfigure(parse_config(cfg))
    adm = _hdr(ADMIN)
    try:
        r = await client.post("/v1/admin/keys", headers=adm, json={"id": "dyn", "adapters": ["alice-*"]})
        assert r.status_code == 201 and r.json()["adapters"] == ["alice-*"]
        secret = r.json()["key"]
        assert (await _chat(client, secret, "tiny:alice-v1")).status_code == 200
        assert (await _chat(client, secret, "tiny:bob-v1")).content == canonical("tiny:bob-v1")
        r = await client.patch("/v1/admin/keys/dyn", headers=adm, json={"adapters": []})
        assert r.status_code == 200 and r.json()["adapters"] == []
        assert (await _chat(client, secret, "tiny:alice-v1")).status_code == 404
        r = await client.patch("/v1/admin/keys/dyn", headers=adm, json={"adapters": None})   # every adapter
        assert r.status_code == 200 and r.json()["adapters"] is None
        assert (await _chat(client, secret, "tiny:bob-v1")).status_code == 200
        ls = {k["id"]: k for k in (await client.get("/v1/admin/keys", headers=adm)).json()["data"]}
        assert ls["dyn"]["adapters"] is None and ls["alice"]["adapters"] == ["alice-*"]
        for bad in (["a:b"], "alice-*", [1]):
            r = await client.post("/v1/admin/keys", headers=adm, json={"adapters": bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == "adapters", bad
    finally:
        await client.aclose()
        await gw.shutdown()
