"""Issue 15: a gateway.yaml change applied the way `serve deploy` applies it, through the
deployment's user_config (Serve calls reconfigure() on the running replicas), under load.

The app is deployed declaratively (the controller's apply_config, what `serve deploy` makes the
dashboard call) with `import_path: serve_apps.gateway:app`; the change is a new
`deployments: [{name: gateway, user_config: {config: ...}}]`, `args` unchanged, so Serve treats it
as a lightweight update. 4 workers stream requests (plain and streamed) through the change: zero
5xx, the same replicas before and after (reconfigured, not restarted), and the new limit holds.
"""
from __future__ import annotations

import asyncio
import time

import openai
import pytest
from ray._private.test_utils import wait_for_condition

from tests.integration.conftest_gateway import (_sha, fake_providers, ray_gateway_session,  # noqa: F401
                                                serve_http_port, unique)

pytestmark = pytest.mark.integration

KEY, ADMIN = "tl-rc-client", "tl-rc-admin"
REPLICA = "x-thawline-replica"
OLD_RPM, NEW_RPM, PRE = 1000, 5, 2
WINDOW_S = 60  # the broker's rate window (gateway/limits/broker.py LimitBroker window_s)
WORKERS, RUN_S = 4, 5.0
MSG = [{"role": "user", "content": "hi"}]


def _config(fake, p: str, *, rpm: int, timeout_s: float) -> dict:
    def t(model: str) -> dict:
        return {"provider": "oa", "model": model, "first_token_timeout_s": 10, "timeout_s": timeout_s}

    return {"providers": {"oa": {"type": "openai_compatible", "base_url": fake.openai_url}},
            # steady: what the workers call, 200 ms upstream so requests are in flight during the
            # change (its targets change too: the route object is replaced under them)
            "routes": {f"{p}-steady": {"targets": [t("rc-gpt-fake-d200")]},
                       f"{p}-lim": {"targets": [t("rc-lim")], "limits": {"rpm": rpm}}},
            "keys": [{"id": f"{p}-client", "sha256": _sha(KEY)}],
            "server": {"admin_key_sha256": _sha(ADMIN)}}


def _apply(name: str, port: int, args_cfg: dict, user_cfg: dict | None) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    app = {"name": name, "route_prefix": f"/{name}", "import_path": "serve_apps.gateway:app",
           "args": {"config": args_cfg, "deployment": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0}}}}
    if user_cfg is not None:
        app["deployments"] = [{"name": "gateway", "user_config": {"config": user_cfg}}]
    schema = ServeDeploySchema.model_validate({"http_options": {"host": "127.0.0.1", "port": port},
                                               "applications": [app]})
    _get_global_client().deploy_apps(schema)


def _settled(name: str, after: float | None = None) -> bool:
    from ray import serve
    st = serve.status().applications.get(name)
    if st is None:
        return False
    if st.status == "DEPLOY_FAILED":
        raise AssertionError(f"{name}: {st.message} {[(n, d.message) for n, d in st.deployments.items()]}")
    dep = st.deployments.get("gateway")
    return (st.status == "RUNNING" and (after is None or st.last_deployed_time_s > after) and dep is not None
            and dep.status == "HEALTHY" and dep.replica_states == {"RUNNING": 2})


@pytest.fixture(scope="module")
def rc(fake_providers, ray_gateway_session):
    from ray import serve
    port = serve_http_port()
    name, p = unique("gw-rc"), unique("rc")
    v1_cfg = _config(fake_providers, p, rpm=OLD_RPM, timeout_s=15)
    _apply(name, port, v1_cfg, None)
    wait_for_condition(lambda: _settled(name), timeout=180)
    yield {"name": name, "port": port, "p": p, "v1_cfg": v1_cfg, "fake": fake_providers,
           "base": f"http://127.0.0.1:{port}/{name}/v1"}
    serve.delete(name)


async def _worker(c: openai.AsyncOpenAI, route: str, stop: float, log: list) -> None:
    i = 0
    while time.monotonic() < stop:
        i += 1
        t = time.monotonic()
        try:
            if i % 2:
                r = await c.chat.completions.with_raw_response.create(model=route, messages=MSG, max_tokens=3)
                r.parse()
                log.append((t, r.status_code, r.headers.get(REPLICA)))
            else:
                async with c.chat.completions.with_streaming_response.create(
                        model=route, messages=MSG, max_tokens=3, stream=True) as r:
                    chunks = [line async for line in r.iter_lines() if line.startswith("data: ")]
                    ok = chunks and chunks[-1] == "data: [DONE]" and not any('"error"' in x for x in chunks)
                    log.append((t, r.status_code if ok else f"stream:{chunks[-2:]}", r.headers.get(REPLICA)))
        except openai.APIStatusError as e:
            log.append((t, e.status_code, e.response.headers.get(REPLICA)))
        except Exception as e:   # a dropped connection is as bad as a 5xx
            log.append((t, f"{type(e).__name__}: {e}", None))


def test_limit_change_applies_through_reconfigure_without_5xx(rc):
    name, port, p, base = rc["name"], rc["port"], rc["p"], rc["base"]
    lim = f"{p}-lim"
    pre_window = -1  # the rate window the PRE requests were admitted in

    def client() -> openai.AsyncOpenAI:    # one per event loop
        return openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=30)

    async def main():
        c = client()
        # Rate limits count in fixed wall-clock minutes (gateway/limits/pool.py): the burst below
        # counts the PRE requests only when it falls in their minute (it once did not: PRE at
        # :5x, burst at :0x of the next minute, 5 rightly admitted).
        nonlocal pre_window
        pre_window = int(time.time() // WINDOW_S)
        for _ in range(PRE):     # the limited route is in use before the change (leases held)
            await c.chat.completions.create(model=lim, messages=MSG, max_tokens=3)
        log: list = []
        t0 = time.monotonic()
        workers = [asyncio.create_task(_worker(c, f"{p}-steady", t0 + RUN_S, log)) for _ in range(WORKERS)]
        await asyncio.sleep(1.0)
        before = {rep for _, st, rep in log if st == 200}
        t_change = time.time()
        v2 = _config(rc["fake"], p, rpm=NEW_RPM, timeout_s=16)
        await asyncio.to_thread(_apply, name, port, rc["v1_cfg"], v2)
        deadline = time.monotonic() + 120
        while not await asyncio.to_thread(_settled, name, t_change):
            assert time.monotonic() < deadline, "the reconfigure did not settle in 120 s"
            await asyncio.sleep(0.2)
        t_settled = time.monotonic()
        await asyncio.gather(*workers)
        if time.monotonic() < t_settled + 1.0:   # some traffic after the change, too
            await _worker(c, f"{p}-steady", t_settled + 1.0, log)
        return log, before, t_settled

    log, before, t_settled = asyncio.run(main())
    bad = [(round(t, 2), st) for t, st, _ in log if st != 200]
    assert not bad, f"{len(bad)} of {len(log)} requests failed during the reconfigure: {bad[:10]}"
    assert len(log) >= 4 * WORKERS
    after = {rep for t, st, rep in log if t > t_settled}
    assert len(before) == 2 and after and after <= before, \
        f"replicas were replaced, not reconfigured: before {before}, after {after}"

    # the new limit, within the same minute as the PRE requests admitted under the old one
    async def burst():
        c, out = client(), []
        for _ in range(2 * NEW_RPM):
            try:
                r = await c.chat.completions.with_raw_response.create(model=lim, messages=MSG, max_tokens=3)
                out.append(r.status_code)
            except openai.APIStatusError as e:
                out.append(e.status_code)
        return out
    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 429}, statuses
    # The PRE requests count against the new limit only inside their own window; should the
    # reconfigure have run past the minute, the new window admits up to the whole new limit.
    counted = PRE if int(time.time() // WINDOW_S) == pre_window else 0
    assert counted + statuses.count(200) <= NEW_RPM, f"{statuses}: more than rpm={NEW_RPM} admitted in a minute"
    assert statuses.count(200) >= 1 and statuses[-1] == 429, statuses
