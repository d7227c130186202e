"""Costs through the deployed gateway (openai SDK -> Serve -> loopback fake OpenAI upstream):
streamed and non-streamed spend agree, budgets block, the ledger lands in Parquet (on graceful
shutdown too), /v1/usage and /metrics report it; local targets are priced by replica-seconds."""
from __future__ import annotations

import asyncio
import json
import math
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import openai
import pyarrow.parquet as pq
import pytest
import ray
from ray._private.test_utils import wait_for_condition

from gateway.costs.schema import LEDGER_COLUMNS, LedgerRow
from tests.integration.conftest_gateway import (PROVIDER_SECRETS, _sha, fake_providers,  # noqa: F401
                                                ray_gateway_session, serve_http_port, unique)

pytestmark = pytest.mark.integration

ADMIN = "tl-costs-admin"
KEYS = {"c-ns": "tl-costs-ns", "c-st": "tl-costs-st", "c-stu": "tl-costs-stu", "c-budget": "tl-costs-budget"}
PRICE = {"input_per_1m": 1.0, "output_per_1m": 2.0, "cached_input_per_1m": 0.5}
MSG = [{"role": "user", "content": "hi there"}]
# The fake answers 7 + 2 prompt tokens (2 of them cached) and 5 completion tokens.
EXPECTED_USD = (7 * 1.0 + 2 * 0.5 + 5 * 2.0) / 1e6


def _config(fake, ledger_url: str, flush_s: float) -> dict:
    t = {"provider": "oa", "model": "gpt-fake", "first_token_timeout_s": 5, "timeout_s": 10}
    return {
        "providers": {"oa": {"type": "openai_compatible", "base_url": fake.openai_url,
                             "api_key_env": "THAWLINE_TEST_OPENAI_KEY", "prices": {"gpt-fake": PRICE}}},
        "routes": {"chat": {"targets": [t]}},
        "keys": [{"id": k, "sha256": _sha(v), **({"budget": {"usd_per_day": 1e-5}} if k == "c-budget" else {})}
                 for k, v in KEYS.items()],
        "ledger": {"url": ledger_url, "flush_interval_s": flush_s},
        "server": {"admin_key_sha256": _sha(ADMIN)},
    }


def _deploy(fake, ledger_url: str, flush_s: float) -> tuple[str, str]:
    from ray import serve

    from serve_apps.gateway import build_app

    port = serve_http_port()
    name = unique("gw-costs")
    app = build_app(_config(fake, ledger_url, flush_s), overrides={
        "ray_actor_options": {"num_cpus": 0}})
    serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
    wait_for_condition(lambda: serve.status().applications[name].status == "RUNNING", timeout=120)
    return name, f"http://127.0.0.1:{port}/{name}"


@pytest.fixture(scope="module")
def gw(fake_providers, ray_gateway_session, tmp_path_factory):
    from ray import serve

    ledger = tmp_path_factory.mktemp("ledger")
    name, base = _deploy(fake_providers, f"file://{ledger}", flush_s=1.0)
    yield base, ledger
    serve.delete(name)


def _client(base: str, key_id: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=KEYS[key_id], max_retries=0, timeout=30)


def _usage(base: str, group_by: str, since: str | None = None) -> dict:
    url = f"{base}/v1/usage?group_by={group_by}" + (f"&since={since}" if since else "")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return {row["group"]: row for row in json.loads(r.read())["data"]}


def _ledger_rows(root: Path) -> list[dict]:
    rows = []
    for f in sorted(root.glob("date=*/*.parquet")):
        t = pq.read_table(f)
        assert tuple(t.schema.names) == LEDGER_COLUMNS
        rows += t.to_pylist()
    return rows


def test_streamed_and_non_streamed_spend_are_equal(gw):
    base, ledger = gw
    r = _client(base, "c-ns").chat.completions.create(model="chat", messages=MSG, max_tokens=16)
    assert r.usage.prompt_tokens == 9
    # Streamed without asking for usage: the gateway still gets it from upstream for the ledger.
    chunks = list(_client(base, "c-st").chat.completions.create(model="chat", messages=MSG, max_tokens=16,
                                                                stream=True))
    assert all(c.usage is None for c in chunks)
    chunks = list(_client(base, "c-stu").chat.completions.create(
        model="chat", messages=MSG, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5

    by_key = _usage(base, "key")
    for k in ("c-ns", "c-st", "c-stu"):
        row = by_key[k]
        assert (row["requests"], row["tokens_in"], row["tokens_out"], row["tokens_cached"]) == (1, 9, 5, 2), k
        assert math.isclose(row["cost_usd"], EXPECTED_USD, rel_tol=1e-9), k
        assert row["estimated_requests"] == 0
    assert _usage(base, "model")["gpt-fake"]["requests"] >= 3
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _usage(base, "key", since=future) == {}

    # The same rows reach Parquet within a flush interval or two.
    wait_for_condition(lambda: {"c-ns", "c-st", "c-stu"} <= {r["key_id"] for r in _ledger_rows(ledger)},
                       timeout=30)
    rows = {r["key_id"]: r for r in _ledger_rows(ledger)}
    st = rows["c-st"]
    assert st["stream"] and not rows["c-ns"]["stream"]
    assert (st["route"], st["target"], st["model"], st["status"], st["attempts"]) == ("chat", "oa", "gpt-fake", "ok", 1)
    assert st["ttft_ms"] is not None and st["latency_ms"] >= st["ttft_ms"] > 0
    assert st["pricing"] == "config" and math.isclose(st["cost_usd"], EXPECTED_USD)


def test_budget_exceeded_is_a_429_in_openai_shape(gw):
    base, _ = gw
    c = _client(base, "c-budget")
    c.chat.completions.create(model="chat", messages=MSG, max_tokens=16)    # $1.8e-5 > the $1e-5 budget

    def refused() -> bool:
        try:
            c.chat.completions.create(model="chat", messages=MSG, max_tokens=16)
            return False
        except openai.RateLimitError as e:
            refused.err = e
            return True

    wait_for_condition(refused, timeout=20, retry_interval_ms=200)
    e = refused.err
    assert e.body["code"] == "budget_exceeded" and e.body["type"] == "insufficient_quota"
    assert "c-budget" in e.body["message"] and "per day" in e.body["message"]
    assert "retry-after" not in e.response.headers           # not something waiting a second fixes
    _client(base, "c-ns").chat.completions.create(model="chat", messages=MSG, max_tokens=4)   # others go on


def test_metrics_count_requests_tokens_and_cost(gw):
    base, _ = gw
    _client(base, "c-ns").chat.completions.create(model="chat", messages=MSG, max_tokens=16)
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})   # admin only
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    assert 'thawline_gateway_requests_total{route="chat",status="ok",target="oa"}' in text
    assert 'thawline_gateway_tokens_total{kind="output",model="gpt-fake",route="chat",target="oa"}' in text
    assert "thawline_gateway_cost_usd_total" in text and "thawline_gateway_ttft_seconds_bucket" in text
    assert 'thawline_gateway_budget_rejections_total{scope="key"}' in text


def test_graceful_shutdown_loses_nothing(fake_providers, ray_gateway_session, tmp_path):
    from ray import serve

    # An hour-long flush interval: only the shutdown flush can have written these rows.
    name, base = _deploy(fake_providers, f"file://{tmp_path}", flush_s=3600)
    c = _client(base, "c-ns")
    for _ in range(3):
        c.chat.completions.create(model="chat", messages=MSG, max_tokens=4)
    assert _ledger_rows(tmp_path) == []
    serve.delete(name)
    rows = _ledger_rows(tmp_path)
    assert len(rows) == 3 and {r["key_id"] for r in rows} == {"c-ns"}


def test_local_target_priced_by_replica_seconds(ray_gateway_session, tmp_path):
    from gateway.costs.ledger_actor import get_ledger_actor
    from gateway.readiness import get_or_create_board

    app = unique("tiny-llm")
    board = get_or_create_board()
    ray.get(board.report.remote(app, "r1", "warm"))
    actor = get_ledger_actor(f"file://{tmp_path}", None, 3600)
    usd_per_hour = 36.0                                                     # $0.01 per replica-second
    local = {"local": (app, usd_per_hour)}

    def row(tokens: int) -> dict:
        return LedgerRow(key_id="k", route="r", target="local", model=app, tokens_in=tokens, tokens_out=0,
                         pricing="local").to_dict()

    s0 = ray.get(board.get.remote(app))["replica_seconds"]
    ray.get(actor.push.remote([row(10), row(30)], [], local))
    ray.get(actor.flush.remote())                                          # first sight: baseline
    wait_for_condition(lambda: ray.get(board.get.remote(app))["replica_seconds"] > s0 + 0.2, timeout=10)
    ray.get(actor.flush.remote())                                          # priced now
    s1 = ray.get(board.get.remote(app))["replica_seconds"]
    rows = [r for r in _ledger_rows(tmp_path) if r["target"] == "local"]
    assert len(rows) == 2
    a, b = sorted(r["cost_usd"] for r in rows)
    assert a > 0 and math.isclose(b, 3 * a, rel_tol=1e-9)                  # shared by tokens
    assert a + b <= (s1 - s0) * usd_per_hour / 3600 + 1e-12                 # never more than was used

    # A period with replica time and no requests is an `idle` row: totals equal the real bill.
    s2 = ray.get(board.get.remote(app))["replica_seconds"]
    wait_for_condition(lambda: ray.get(board.get.remote(app))["replica_seconds"] > s2 + 0.1, timeout=10)
    ray.get(actor.flush.remote())
    idle = [r for r in _ledger_rows(tmp_path) if r["status"] == "idle"]
    assert len(idle) == 1 and idle[0]["cost_usd"] > 0 and idle[0]["target"] == "local"
    ray.get(board.report.remote(app, "r1", "stopped"))
