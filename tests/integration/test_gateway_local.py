"""The `serve` provider: a local Serve app called through a DeploymentHandle (no HTTP hop), its
cold/warm state read from the real ReadinessBoard, and spillover while it is cold."""
from __future__ import annotations

import openai
import pytest

from tests.integration.conftest_gateway import (LOCAL_APP, fake_providers, gateway,  # noqa: F401
                                                ray_gateway_session)

pytestmark = pytest.mark.integration

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def local_llm(gateway):
    import ray
    from ray import serve

    from gateway.readiness import get_or_create_board
    from testkit.fake_llm import FakeLLM

    handle = serve.run(serve.deployment(FakeLLM, name="FakeLLM", ray_actor_options={"num_cpus": 0}).bind(),
                       name=LOCAL_APP, route_prefix=None)
    board = get_or_create_board()
    ray.get(board.report.remote(LOCAL_APP, "r1", "warm"))
    yield handle, board
    ray.get(board.report.remote(LOCAL_APP, "r1", "stopped"))
    serve.delete(LOCAL_APP)


def _target_when(gw, model: str, want_prefix: str, timeout_s: float = 20.0) -> openai.types.chat.ChatCompletion:
    """The gateway polls the board every 0.5 s: poll until the routing reflects the new state."""
    from ray._private.test_utils import wait_for_condition

    out = {}

    def check():
        raw = gw.client().chat.completions.with_raw_response.create(model=model, messages=MSG)
        out["raw"] = raw
        return raw.headers["x-thawline-target"].startswith(want_prefix)

    wait_for_condition(check, timeout=timeout_s, retry_interval_ms=200)
    return out["raw"]


def test_warm_local_target_is_called_through_its_handle(gateway, local_llm):
    handle, _ = local_llm
    raw = _target_when(gateway, "local", "local/0:local/")
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello from local!"
    assert resp.usage.prompt_tokens == 4 and resp.usage.completion_tokens == 4
    chunks = list(gateway.client().chat.completions.create(model="local", messages=MSG, stream=True,
                                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from local!"
    assert chunks[-1].usage.completion_tokens == 4
    text = gateway.client().completions.create(model="local", prompt="x", max_tokens=2).choices[0].text
    assert text == "Hello from"


def test_cold_local_target_spills_over_and_is_woken(gateway, local_llm):
    handle, board = local_llm
    import ray
    n_before = len(handle.seen.remote().result())
    ray.get(board.report.remote(LOCAL_APP, "r1", "stopped"))      # scaled to zero
    raw = _target_when(gateway, "local", "local/1:oa/")
    assert raw.parse().choices[0].message.content == "Hello from fake openai!"
    assert raw.headers["x-thawline-fallbacks"] == "local/0:local/tiny=cold"
    assert raw.headers["x-thawline-attempts"] == "1"      # a cold skip is not an attempt
    # spilled requests start a scale-up: a 1-token wake-up reaches the local app (at most one
    # per WAKE_EVERY_S, so keep spilling until the throttle of an earlier wake has passed)
    from ray._private.test_utils import wait_for_condition

    def woken() -> bool:
        gateway.client().chat.completions.create(model="local", messages=MSG)
        return any(c["body"].get("max_tokens") == 1 for c in handle.seen.remote().result()[n_before:])

    wait_for_condition(woken, timeout=30, retry_interval_ms=500)
    ray.get(board.report.remote(LOCAL_APP, "r1", "warm"))         # back: requests return to local
    _target_when(gateway, "local", "local/0:local/")


def test_local_stream_dying_midway_continues_on_hosted(gateway, local_llm):
    chunks = list(gateway.client().chat.completions.create(model="localcut", messages=MSG, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from" + "Hello from fake openai!"
