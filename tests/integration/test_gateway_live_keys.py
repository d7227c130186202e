"""Issue 15 through a deployed 2-replica gateway (real Ray Serve, the `openai` SDK, loopback fakes):
a key created through the admin API works on every replica within a second and stops working
within a second of revocation; `thawline keys create|ls|revoke` against it; tools and JSON mode
survive a fallback from a failing OpenAI-compatible target to Anthropic and to Gemini, and a field
no target can honour is a 400 naming it.

Which replica answered comes from the `x-thawline-replica` header the deployment sets.
The key store is a file:// directory: memory:// is per process, so replicas would not share it.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import openai
import pytest
from ray._private.test_utils import wait_for_condition

from tests.conftest import REPO_ROOT
from tests.integration.conftest_gateway import (_sha, fake_providers, ray_gateway_session,  # noqa: F401
                                                own_gateway, unique)

pytestmark = pytest.mark.integration

ADMIN, KEY = "tl-lk-admin", "tl-lk-client"
REPLICA = "x-thawline-replica"
DEADLINE_S = 1.0          # the promise: on every replica within a second ...
MARGIN_S = 0.5            # ... plus the time of the requests that observe it on a loaded box
MSG = [{"role": "user", "content": "weather in Oslo?"}]
WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather at a place",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"},
                                                "unit": {"type": "string", "enum": ["c", "f"]}},
                                                "required": ["city"], "additionalProperties": False}}}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": ["integer", "null"]}},
          "required": ["name"], "additionalProperties": False}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}


def _config(fake, p: str, store_url: str) -> dict:
    def t(provider: str, model: str, **kw) -> dict:
        return {"provider": provider, "model": model, "first_token_timeout_s": 10, "timeout_s": 15, **kw}

    return {
        "providers": {"oa": {"type": "openai_compatible", "base_url": fake.openai_url},
                      "an": {"type": "anthropic", "base_url": fake.anthropic_url},
                      "ge": {"type": "gemini", "base_url": fake.gemini_url}},
        "routes": {f"{p}-chat": {"targets": [t("oa", "lk-gpt-fake")]},
                   f"{p}-to-an": {"targets": [t("oa", "lk-tt-500", max_retries=0), t("an", "lk-claude-tools")]},
                   f"{p}-to-ge": {"targets": [t("oa", "lk-tg-500", max_retries=0), t("ge", "lk-gemini-tools")]},
                   f"{p}-ge-only": {"targets": [t("ge", "lk-gemini-only")]}},
        "keys": [{"id": f"{p}-client", "sha256": _sha(KEY)}],
        "key_store": {"url": store_url, "poll_interval_s": 0.25},
        # the failing first targets fail on every call: their breakers must not open mid-test
        "breaker": {"consecutive_failures": 1000},
        "server": {"admin_key_sha256": _sha(ADMIN)},
    }


@pytest.fixture(scope="module")
def gw(fake_providers, ray_gateway_session, tmp_path_factory):
    p = unique("lk")
    store = tmp_path_factory.mktemp("lk-keys")
    with own_gateway(_config(fake_providers, p, f"file://{store}"), unique("gw-lk")) as base:
        v1 = base + "/v1"
        replicas = _replica_ids(v1, KEY, f"{p}-chat")
        yield {"v1": v1, "p": p, "fake": fake_providers, "replicas": replicas}


def _client(v1: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=v1, api_key=key, max_retries=0, timeout=30)


async def _probe(c: openai.AsyncOpenAI, route: str) -> tuple[int, str]:
    """(status, replica) of one small chat request."""
    try:
        r = await c.chat.completions.with_raw_response.create(model=route, messages=MSG, max_tokens=2)
        return r.status_code, r.headers[REPLICA]
    except openai.APIStatusError as e:
        return e.status_code, e.response.headers[REPLICA]


def _replica_ids(v1: str, key: str, route: str) -> set[str]:
    """Both replicas' ids, from the header of answers to concurrent requests."""
    async def main() -> set[str]:
        c = _client(v1, key)
        seen: set[str] = set()
        for _ in range(50):
            seen |= {rep for st, rep in await asyncio.gather(*[_probe(c, route) for _ in range(4)])
                     if st == 200}
            if len(seen) == 2:
                return seen
        raise AssertionError(f"only replicas {seen} answered 50 rounds of 4 requests")
    return asyncio.run(main())


async def _until_every_replica(c: openai.AsyncOpenAI, route: str, replicas: set[str], status: int,
                               t0: float) -> float:
    """Seconds from t0 until every replica has answered `status` since the last other answer
    (bounded: gives up at 10 x the deadline), then 8 more requests all answer `status`."""
    confirmed: set[str] = set()
    history: list[tuple[float, int, str]] = []
    while confirmed != replicas:
        if time.monotonic() - t0 > 10 * (DEADLINE_S + MARGIN_S):
            raise AssertionError(f"not every replica answered {status}: {history[-8:]}")
        for st, rep in await asyncio.gather(_probe(c, route), _probe(c, route)):
            history.append((round(time.monotonic() - t0, 3), st, rep))
            if st == status:
                confirmed.add(rep)
            else:
                confirmed.discard(rep)
    took = time.monotonic() - t0
    after = [await _probe(c, route) for _ in range(8)]
    assert all(st == status for st, _ in after), (after, history)
    return took


def _admin(v1: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    import httpx
    r = httpx.request(method, v1.removesuffix("/v1") + path, json=body,
                      headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    return r.status_code, r.json()


def test_created_key_works_on_every_replica_within_a_second_and_revoke_too(gw):
    v1, p, replicas = gw["v1"], gw["p"], gw["replicas"]
    route = f"{p}-chat"

    async def main():
        st, out = await asyncio.to_thread(_admin, v1, "POST", "/v1/admin/keys", {"routes": [route]})
        t_created = time.monotonic()
        assert st == 201 and out["key"].startswith("tl-"), out
        c = _client(v1, out["key"])
        took = await _until_every_replica(c, route, replicas, 200, t_created)
        assert took <= DEADLINE_S + MARGIN_S, f"the new key took {took:.2f}s to work on both replicas"
        # the key is limited to its routes on every replica too
        assert {await _probe(c, f"{p}-to-an") for _ in range(6)} <= {(403, r) for r in replicas} | \
            {(404, r) for r in replicas}

        st, gone = await asyncio.to_thread(_admin, v1, "DELETE", f"/v1/admin/keys/{out['id']}")
        t_revoked = time.monotonic()
        assert st == 200 and gone == {"id": out["id"], "revoked": True}
        took = await _until_every_replica(c, route, replicas, 401, t_revoked)
        assert took <= DEADLINE_S + MARGIN_S, f"the revoked key kept working {took:.2f}s on some replica"
        # rotate: the old secret stops, the new one works, on every replica
        st, k2 = await asyncio.to_thread(_admin, v1, "POST", "/v1/admin/keys", {})
        assert st == 201
        await _until_every_replica(_client(v1, k2["key"]), route, replicas, 200, time.monotonic())
        st, rot = await asyncio.to_thread(_admin, v1, "POST", f"/v1/admin/keys/{k2['id']}/rotate")
        t_rot = time.monotonic()
        assert st == 200 and rot["key"] != k2["key"]
        assert await _until_every_replica(_client(v1, k2["key"]), route, replicas, 401, t_rot) <= \
            DEADLINE_S + MARGIN_S
        await _until_every_replica(_client(v1, rot["key"]), route, replicas, 200, t_rot)
    asyncio.run(main())


def test_revoke_that_answered_stays_revoked_under_racing_edits_on_other_replicas(gw):
    """A revoke racing a rotate or a PATCH of the same key (the proxy spreads them over both
    replicas): once the revoke answered 200, neither the old nor a rotated secret works anywhere.
    Two racing creates of one id: one 201, one 409."""
    from concurrent.futures import ThreadPoolExecutor

    v1, p, replicas = gw["v1"], gw["p"], gw["replicas"]
    route = f"{p}-chat"
    with ThreadPoolExecutor(4) as pool:
        for i in range(6):
            st, k = _admin(v1, "POST", "/v1/admin/keys", {"id": unique(f"race{i}")})
            assert st == 201, k
            edit = (("POST", f"/v1/admin/keys/{k['id']}/rotate", None) if i % 2 else
                    ("PATCH", f"/v1/admin/keys/{k['id']}", {"limits": {"rpm": 5}}))
            rev = pool.submit(_admin, v1, "DELETE", f"/v1/admin/keys/{k['id']}")
            other = pool.submit(_admin, v1, *edit)
            (st_rev, _), (st_edit, edited) = rev.result(), other.result()
            assert st_rev == 200 and st_edit in (200, 404), (st_rev, st_edit, edited)
            secrets = [k["key"]] + ([edited["key"]] if st_edit == 200 and "key" in edited else [])
            for secret in secrets:
                asyncio.run(_until_every_replica(_client(v1, secret), route, replicas, 401, time.monotonic()))
            assert _admin(v1, "PATCH", f"/v1/admin/keys/{k['id']}", {"limits": {"rpm": 1}})[0] == 404
        for i in range(4):
            kid = unique(f"twin{i}")
            a = pool.submit(_admin, v1, "POST", "/v1/admin/keys", {"id": kid})
            b = pool.submit(_admin, v1, "POST", "/v1/admin/keys", {"id": kid})
            assert sorted([a.result()[0], b.result()[0]]) == [201, 409]


def _thawline(*args: str, admin: str | None = ADMIN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("THAWLINE_ADMIN_KEY", "THAWLINE_BASE_URL")}
    if admin is not None:
        env["THAWLINE_ADMIN_KEY"] = admin
    return subprocess.run([sys.executable, "-m", "cluster.cli.main", "keys", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_keys_cli_create_ls_revoke(gw):
    v1, p, replicas = gw["v1"], gw["p"], gw["replicas"]
    route, key_id = f"{p}-chat", unique("cli")
    r = _thawline("create", "--id", key_id, "--route", route, "--rpm", "600", "--base-url", v1)
    assert r.returncode == 0, r.stderr
    secret = next(line.split(": ", 1)[1] for line in r.stdout.splitlines() if line.startswith("secret"))
    assert secret.startswith("tl-") and r.stdout.count(secret) == 1 and "shown once" in r.stdout
    asyncio.run(_until_every_replica(_client(v1, secret), route, replicas, 200, time.monotonic()))

    for args in (("ls", "--base-url", v1), ("ls", "--json", "--base-url", v1)):
        r = _thawline(*args)
        assert r.returncode == 0, r.stderr
        assert key_id in r.stdout and f"{p}-client" in r.stdout
        assert secret not in r.stdout and _sha(secret) not in r.stdout      # never shown again
    listed = {k["id"]: k for k in json.loads(r.stdout)["data"]}
    assert listed[key_id]["source"] == "store" and listed[key_id]["limits"] == {"rpm": 600}
    assert listed[key_id]["routes"] == [route] and listed[f"{p}-client"]["source"] == "config"

    r = _thawline("create", "--id", key_id, "--base-url", v1)                 # id taken
    assert r.returncode == 1 and "409" in r.stderr and r.stdout == ""
    r = _thawline("create", "--base-url", v1, admin="tl-not-the-admin-key")   # not the admin
    assert r.returncode == 1 and "401" in r.stderr and "tl-" not in r.stdout
    r = _thawline("revoke", key_id, "--base-url", v1, admin=None)              # no admin key
    assert r.returncode == 1 and "admin key" in r.stderr

    r = _thawline("revoke", key_id, "--base-url", v1)
    assert r.returncode == 0 and f"revoked {key_id}" in r.stdout, r.stderr
    asyncio.run(_until_every_replica(_client(v1, secret), route, replicas, 401, time.monotonic()))
    r = _thawline("revoke", key_id, "--base-url", v1)
    assert r.returncode == 1 and "404" in r.stderr
    r = _thawline("revoke", f"{p}-client", "--base-url", v1)                   # a gateway.yaml key
    assert r.returncode == 1 and "gateway.yaml" in r.stderr


@pytest.mark.parametrize("to, api, model", [("to-an", "anthropic", "lk-claude-tools"),
                                            ("to-ge", "gemini", "lk-gemini-tools")])
def test_tools_and_json_mode_survive_fallback_through_serve(gw, to, api, model):
    v1, p, fake = gw["v1"], gw["p"], gw["fake"]
    route = f"{p}-{to}"
    c = openai.OpenAI(base_url=v1, api_key=KEY, max_retries=0, timeout=30)
    r = c.chat.completions.with_raw_response.create(model=route, messages=MSG, tools=[WEATHER],
                                                   tool_choice="required")
    assert "=500" in r.headers["x-thawline-fallbacks"]
    choice = r.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "x", "unit": "c"}
    # the tool's result back, a text answer out
    r2 = c.chat.completions.create(model=route, tools=[WEATHER], messages=[
        *MSG, choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'}])
    assert r2.choices[0].message.content.startswith("Hello from fake")
    # a streamed tool call
    name, args, finish = "", "", None
    for ch in c.chat.completions.create(model=route, messages=MSG, tools=[WEATHER], stream=True):
        for d in ch.choices:
            for tc in d.delta.tool_calls or []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
            finish = d.finish_reason or finish
    assert (name, json.loads(args), finish) == ("weather", {"city": "x", "unit": "c"}, "tool_calls")
    # JSON mode with a schema, plain and streamed
    r3 = c.chat.completions.create(model=route, messages=MSG, response_format=JSON_FORMAT)
    assert json.loads(r3.choices[0].message.content) == {"name": "x", "age": 1}
    text = "".join(d.delta.content or "" for ch in c.chat.completions.create(
        model=route, messages=MSG, response_format=JSON_FORMAT, stream=True) for d in ch.choices)
    assert json.loads(text) == {"name": "x", "age": 1}
    seen = [q["body"] for q in fake.state.seen_requests(api, model)]
    if api == "anthropic":
        assert seen[0]["tool_choice"] == {"type": "any"}
        assert seen[-1]["tool_choice"] == {"type": "tool", "name": "person"}
    else:
        assert seen[0]["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
        assert seen[-1]["generationConfig"]["responseMimeType"] == "application/json"


def test_field_no_target_can_honour_is_a_400_naming_it(gw):
    v1, p, fake = gw["v1"], gw["p"], gw["fake"]
    c = openai.OpenAI(base_url=v1, api_key=KEY, max_retries=0, timeout=30)
    bad = {"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "odd", "schema": bad}}
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=f"{p}-ge-only", messages=MSG, response_format=fmt)
    assert e.value.body["param"] == "response_format" and e.value.body["code"] == "unsupported_parameter"
    assert "response_format" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=f"{p}-ge-only", messages=MSG, tools=[WEATHER], stream=True,
                                  parallel_tool_calls=False)
    assert e.value.body["param"] == "parallel_tool_calls"
    assert fake.state.count("gemini", "lk-gemini-only") == 0
