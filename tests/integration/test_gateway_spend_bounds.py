"""Issue 11 through the deployed gateway (two Serve replicas, `openai` SDK, loopback fake upstream):
budgets reserve each request's worst case, tpm admits exactly what fits across replicas, the
request fields that decide cost are bounded, odd upstream usage is counted, bad `since` is a 400;
and (ledger actor) local replica time is never billed to requests that got no answer."""
from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.error
import urllib.request

import openai
import pytest
import ray
from ray._private.test_utils import wait_for_condition

from gateway.costs.schema import LedgerRow
from tests.integration.conftest_gateway import (PROVIDER_SECRETS, _sha, fake_providers,  # noqa: F401
                                                ray_gateway_session, own_gateway, unique)

pytestmark = pytest.mark.integration

ADMIN = "tl-sb-admin"
KEY = "tl-sb-key"
BUDGET_KEY = "tl-sb-budget"
PRICE = {"input_per_1m": 1.0, "output_per_1m": 2.0, "cached_input_per_1m": 0.5}
MSG = [{"role": "user", "content": "hi"}]
# "hi" is estimated at 1 + 4 (message framing) prompt tokens; with max_tokens=16 the worst case
# is 5 * $1 + 16 * $2 per 1M. The fake really answers 8 prompt tokens (2 cached) + 5 output.
WORST_USD = (5 * 1.0 + 16 * 2.0) / 1e6
ACTUAL_USD = (6 * 1.0 + 2 * 0.5 + 5 * 2.0) / 1e6
BUDGET_USD = 100e-6
TPM_BURSTS = 3


def _config(fake, p: str, ledger_url: str) -> dict:
    def t(model: str, **kw) -> dict:
        return {"provider": "oa", "model": model, "first_token_timeout_s": 10, "timeout_s": 15, **kw}

    routes = {
        f"{p}-budget": {"targets": [t("sb-gpt-fake-d300")]},
        f"{p}-capped": {"targets": [t("sb-capped")], "max_tokens_cap": 2},
        f"{p}-bounded": {"targets": [t("sb-bounded")]},
        f"{p}-odd": {"targets": [t("sb-gpt-fake-oddusage")]},
    }
    for i in range(TPM_BURSTS):
        # the upstream answers after 2.5 s: every admission of a burst is decided before any
        # answer settles (refunds) its pre-charge
        routes[f"{p}-tpm{i}"] = {"targets": [t("sb-tpm-d2500")], "limits": {"tpm": 1000}}
    return {
        "providers": {"oa": {"type": "openai_compatible", "base_url": fake.openai_url,
                             "api_key_env": "THAWLINE_TEST_OPENAI_KEY", "prices": {"sb-gpt-fake": PRICE}}},
        "routes": routes,
        "keys": [{"id": f"{p}-client", "sha256": _sha(KEY)},
                 {"id": f"{p}-budget", "sha256": _sha(BUDGET_KEY), "budget": {"usd_per_day": BUDGET_USD}}],
        "ledger": {"url": ledger_url, "flush_interval_s": 1.0},
        "server": {"admin_key_sha256": _sha(ADMIN)},
        # generous reclaim wait: on a loaded box a slow reclaim would be an undershoot
        "limiter": {"max_wait_s": 5.0},
    }


@pytest.fixture(scope="module")
def gw(fake_providers, ray_gateway_session, tmp_path_factory):
    p = unique("sb")
    ledger = tmp_path_factory.mktemp("sb-ledger")
    with own_gateway(_config(fake_providers, p, f"file://{ledger}"), unique("gw-sb")) as base:
        yield base, p, fake_providers


def _get(url: str, key: str = ADMIN) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _usage_by_key(base: str) -> dict:
    return {r["group"]: r for r in _get(f"{base}/v1/usage?group_by=key")[1]["data"]}


async def _burst(base: str, key: str, model: str, n: int, **kw) -> list:
    """n requests at once from n SDK clients (own connections, so both replicas get some)."""
    sdks = [openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60) for _ in range(n)]

    async def one(i: int):
        try:
            return await sdks[i].chat.completions.create(model=model, messages=MSG, **kw)
        except openai.APIStatusError as e:
            return e

    try:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout=120)
    finally:
        await asyncio.gather(*(s.close() for s in sdks))


def test_concurrent_requests_cross_a_budget_by_at_most_one_worst_case(gw):
    base, p, _ = gw
    out = asyncio.run(_burst(base, BUDGET_KEY, f"{p}-budget", 40, max_tokens=16))
    ok = [r for r in out if not isinstance(r, Exception)]
    refused = [e for e in out if isinstance(e, Exception)]
    assert ok and refused
    assert all(e.status_code == 429 and e.body["code"] == "budget_exceeded"
               and e.body["type"] == "insufficient_quota" for e in refused), refused[0].body
    # Later requests, one at a time, until the budget refuses them (bounded).
    c = openai.OpenAI(base_url=base + "/v1", api_key=BUDGET_KEY, max_retries=0, timeout=30)
    later_ok, err = 0, None
    for _ in range(15):
        try:
            c.chat.completions.create(model=f"{p}-budget", messages=MSG, max_tokens=16)
            later_ok += 1
        except openai.RateLimitError as e:
            err = e
            break
    assert err is not None and err.body["code"] == "budget_exceeded" and f"{p}-budget" in err.body["message"]
    assert "retry-after" not in err.response.headers
    n_ok = len(ok) + later_ok
    wait_for_condition(lambda: _usage_by_key(base).get(f"{p}-budget", {}).get("requests") == n_ok, timeout=30)
    spent = _usage_by_key(base)[f"{p}-budget"]["cost_usd"]
    assert math.isclose(spent, n_ok * ACTUAL_USD, rel_tol=1e-6)
    assert spent <= BUDGET_USD + WORST_USD, f"{n_ok} answered, ${spent} spent of ${BUDGET_USD}"
    assert spent >= BUDGET_USD - WORST_USD                 # and the budget was really used


def _fresh_window(min_left_s: float = 15.0) -> None:
    if 60 - time.time() % 60 < min_left_s:
        start = int(time.time() // 60)
        wait_for_condition(lambda: int(time.time() // 60) > start, timeout=min_left_s + 1)


def test_tpm_admits_exactly_what_fits_across_two_replicas(gw):
    base, p, _ = gw
    for i in range(TPM_BURSTS):
        _fresh_window()
        # pre-charge 1 + 4 + 95 = 100 tokens each: 10 of 30 fit in tpm 1000
        out = asyncio.run(_burst(base, KEY, f"{p}-tpm{i}", 30, max_tokens=95))
        ok = [r for r in out if not isinstance(r, Exception)]
        refused = [e for e in out if isinstance(e, Exception)]
        assert len(ok) == 10, (i, len(ok), [e.body for e in refused[:2]])
        assert all(e.status_code == 429 and e.body["code"] == "rate_limit_exceeded" for e in refused)


def test_both_max_token_fields_are_clamped_to_what_was_pre_charged(gw):
    base, p, fake = gw
    c = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=30)
    before = len(fake.state.seen_requests("openai", "sb-capped"))
    c.chat.completions.create(model=f"{p}-capped", messages=MSG,
                              extra_body={"max_completion_tokens": 1, "max_tokens": 100000})
    c.chat.completions.create(model=f"{p}-capped", messages=MSG,
                              extra_body={"max_completion_tokens": None, "max_tokens": 100000})
    seen = [r["body"] for r in fake.state.seen_requests("openai", "sb-capped")[before:]]
    assert len(seen) == 2
    for b in seen:
        sent = [b[k] for k in ("max_tokens", "max_completion_tokens") if k in b]
        assert sent and all(isinstance(v, int) and v <= 2 for v in sent), b


def test_n_service_tier_and_store_are_bounded(gw):
    base, p, fake = gw
    c = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=30)
    model = f"{p}-bounded"
    before = fake.state.count("openai", "sb-bounded")
    for kw, param in (({"n": 9}, "n"), ({"service_tier": "priority"}, "service_tier"),
                      ({"store": True}, "store")):
        with pytest.raises(openai.BadRequestError) as ei:
            c.chat.completions.create(model=model, messages=MSG, **kw)
        assert ei.value.body["param"] == param and ei.value.body["type"] == "invalid_request_error"
    assert fake.state.count("openai", "sb-bounded") == before          # none reached the upstream
    r = c.chat.completions.create(model=model, messages=MSG, n=2, service_tier="default", store=False)
    assert r.choices
    b = fake.state.seen_requests("openai", "sb-bounded")[-1]["body"]
    assert b["n"] == 2 and b["max_tokens"] == 4096                     # the default bound went upstream


def test_odd_upstream_usage_is_counted_not_a_failure(gw):
    base, p, _ = gw
    c = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=30)
    r = c.chat.completions.create(model=f"{p}-odd", messages=MSG, max_tokens=16)
    assert r.choices[0].message.content == "Hello from fake openai!"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0        # counted, not garbage
    chunks = list(c.chat.completions.create(model=f"{p}-odd", messages=MSG, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello from fake openai!"
    assert chunks[-1].usage.completion_tokens > 0

    def rows():
        return _get(f"{base}/v1/usage?group_by=route")[1]["data"]
    wait_for_condition(lambda: any(g["group"] == f"{p}-odd" and g["requests"] == 2 for g in rows()), timeout=30)
    row = next(g for g in rows() if g["group"] == f"{p}-odd")
    assert row["estimated_requests"] == 2 and row["tokens_out"] > 0


def test_usage_since_out_of_range_is_a_400_naming_since(gw):
    base, _, _ = gw
    for since in ("9" * 30, "1" + "0" * 20):
        status, body = _get(f"{base}/v1/usage?since={since}")
        assert status == 400, (since, body)
        assert body["error"]["param"] == "since" and body["error"]["type"] == "invalid_request_error"


def test_local_replica_time_is_not_billed_to_requests_without_an_answer(ray_gateway_session, tmp_path):
    from gateway.costs.ledger_actor import get_ledger_actor
    from gateway.readiness import get_or_create_board

    app = unique("sb-tiny")
    board = get_or_create_board()
    ray.get(board.report.remote(app, "r1", "warm"))
    actor = get_ledger_actor(f"file://{tmp_path}", None, 3600)
    local = {"local": (app, 36.0)}                                    # $0.01 per replica-second

    def failed() -> dict:                                            # all targets failed: 0 tokens
        return LedgerRow(key_id="k-fail", route="tiny", target="local", model="tiny", status="error",
                         pricing="local").to_dict()

    ray.get(actor.push.remote([], ["key:k-fail"], local))
    ray.get(actor.flush.remote())                                    # first sight: baseline
    s0 = ray.get(board.get.remote(app))["replica_seconds"]
    ray.get(actor.push.remote([failed() for _ in range(5)], ["key:k-fail"], local))
    wait_for_condition(lambda: ray.get(board.get.remote(app))["replica_seconds"] > s0 + 0.2, timeout=10)
    ray.get(actor.flush.remote())
    by_key = {r["group"]: r for r in ray.get(actor.query.remote("key", None))}
    assert by_key["k-fail"]["requests"] == 5 and by_key["k-fail"]["cost_usd"] == 0.0
    by_route = {r["group"]: r for r in ray.get(actor.query.remote("route", None))}
    assert by_route["tiny"]["cost_usd"] == 0.0
    from gateway.costs.usage import IDLE_GROUP

    idle = by_route[IDLE_GROUP]                                      # the replica time: its own line
    assert idle["cost_usd"] > 0 and idle["requests"] == 0
    spend = ray.get(actor.push.remote([], ["key:k-fail", "route:tiny"], local))
    assert all(v == 0.0 for v in spend.values())                     # no budget sees it
    ray.get(board.report.remote(app, "r1", "stopped"))
