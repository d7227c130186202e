"""LoRA adapters through the deployed gateway (issue 23, "through the gateway"): the official
`openai` SDK -> Serve -> gateway -> DeploymentHandle -> a fake LLM app (testkit/fake_llm.py) that
serves adapters and lists them on the real ReadinessBoard, with a loopback fake OpenAI as the
hosted upstream. `<route>:<adapter>` is answered by the adapter; an adapter outside a key's scope,
one that does not exist and one the app no longer has get byte-identical 404s; /v1/models lists
what each key may use; usage groups by adapter (API, `thawline usage`, Parquet); an adapter falls
back only to its declared targets; its own limits apply."""
from __future__ import annotations

import json
import urllib.request
from types import SimpleNamespace

import openai
import pyarrow.dataset as ds
import pytest
from ray._private.test_utils import wait_for_condition

from gateway.llm_protocol import model_not_found
from tests.integration.conftest_gateway import (_sha, fake_providers, own_gateway,  # noqa: F401
                                                ray_gateway_session, unique)

pytestmark = pytest.mark.integration

ADMIN, ALL, ALICE, NONE = "tl-ad-admin", "tl-ad-all", "tl-ad-alice", "tl-ad-none"
SERVED = ["alice-v1", "alice-v2", "alice-count", "alice-tight", "bob-v1", "bob-down", "carol-down"]
MSG = [{"role": "user", "content": "hi"}]


def _config(fake, app: str, ledger_url: str) -> dict:
    def t(provider: str, model: str) -> dict:
        return {"provider": provider, "model": model, "first_token_timeout_s": 10, "timeout_s": 10}

    return {
        "providers": {"local": {"type": "serve", "app": app},
                      "oa": {"type": "openai_compatible", "base_url": fake.openai_url,
                             "api_key_env": "THAWLINE_TEST_OPENAI_KEY"}},
        # the route's own hosted target (lora-base) must never answer an adapter request
        "routes": {"lora": {"targets": [t("local", "tiny"), t("oa", "lora-base")],
                            "adapters": {"bob-*": {"fallback": [t("oa", "ft-bob")]},
                                         "alice-tight": {"limits": {"tpm": 1}}}}},
        "keys": [{"id": "all", "sha256": _sha(ALL)}, {"id": "alice", "sha256": _sha(ALICE), "adapters": ["alice-*"]},
                 {"id": "none", "sha256": _sha(NONE), "adapters": []}],
        "ledger": {"url": ledger_url, "flush_interval_s": 1.0},
        "server": {"admin_key_sha256": _sha(ADMIN)},
    }


@pytest.fixture(scope="module")
def gw(fake_providers, ray_gateway_session, tmp_path_factory):
    import ray
    from ray import serve

    from gateway.readiness import get_or_create_board
    from testkit.fake_llm import FakeLLM

    app = unique("gw-lora-llm")
    # the fake app publishes its adapters on the board as the LLM app's router does
    handle = serve.run(serve.deployment(FakeLLM, name="FakeLLM", ray_actor_options={"num_cpus": 0}).bind(app, SERVED),
                       name=app, route_prefix=None)
    # a listing gone stale: the board still names an adapter the app no longer has
    ray.get(get_or_create_board().note_adapters.remote(app, [*SERVED, "alice-stale"]))
    ledger = tmp_path_factory.mktemp("lora-ledger")
    try:
        with own_gateway(_config(fake_providers, app, f"file://{ledger}"), unique("gw-lora"), replicas=1) as base:
            g = SimpleNamespace(base=base, ledger=ledger, fake=fake_providers, handle=handle)
            # the serve provider polls the board every 2 s
            wait_for_condition(lambda: "lora:alice-stale" in _ids(g, ALL), timeout=30, retry_interval_ms=300)
            yield g
    finally:
        serve.delete(app)


def _client(g, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base + "/v1", api_key=key, max_retries=0, timeout=30)


def _ids(g, key: str) -> list[str]:
    return [m.id for m in _client(g, key).models.list().data]


def _get(g, path: str) -> dict:
    req = urllib.request.Request(g.base + path, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_an_adapter_is_answered_by_the_local_app(gw):
    raw = _client(gw, ALICE).chat.completions.with_raw_response.create(model="lora:alice-v1", messages=MSG)
    assert raw.parse().choices[0].message.content == "Hello from alice-v1!"
    assert raw.headers["x-thawline-target"] == "lora/0:local/tiny"
    chunks = list(_client(gw, ALL).chat.completions.create(model="lora:bob-v1", messages=MSG, stream=True,
                                                           stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from bob-v1!"
    assert chunks[-1].usage.completion_tokens == 4
    # the base model is still the base
    assert _client(gw, NONE).chat.completions.create(model="lora", messages=MSG).choices[0].message.content == \
        "Hello from local!"
    sent = [c for c in gw.handle.seen.remote().result() if c.get("adapter") == "alice-v1"]
    assert sent and sent[-1]["body"]["model"] == "tiny"


@pytest.mark.parametrize("key, model", [
    (ALICE, "lora:bob-v1"),       # exists, outside the key's alice-*
    (ALICE, "lora:alice-nope"),   # in scope, does not exist
    (NONE, "lora:alice-v1"),      # a key with adapters: []
    (ALICE, "lora:alice-stale"),  # listed, but the app answers its own 404
])
@pytest.mark.parametrize("stream", [False, True])
def test_refused_and_missing_adapters_get_identical_404s(gw, key, model, stream):
    with pytest.raises(openai.NotFoundError) as ei:
        _client(gw, key).chat.completions.create(model=model, messages=MSG, stream=stream)
    assert ei.value.status_code == 404
    assert ei.value.response.content == json.dumps(model_not_found(model).body).encode()


def test_models_lists_only_the_adapters_a_key_may_use(gw):
    alice = _ids(gw, ALICE)
    assert alice == ["lora", *(f"lora:{n}" for n in sorted([*SERVED, "alice-stale"]) if n.startswith("alice-"))]
    assert "lora:bob-v1" not in alice
    assert _ids(gw, NONE) == ["lora"]
    assert _ids(gw, ALL) == ["lora", *(f"lora:{n}" for n in sorted([*SERVED, "alice-stale"]))]


def test_adapter_falls_back_only_to_its_declared_targets(gw):
    base_calls = gw.fake.state.count("openai", "lora-base")
    raw = _client(gw, ALL).chat.completions.with_raw_response.create(model="lora:bob-down", messages=MSG)
    assert raw.parse().choices[0].message.content == "Hello from fake openai!"
    assert raw.headers["x-thawline-target"] == "lora:bob-*/0:oa/ft-bob"
    assert raw.headers["x-thawline-fallbacks"].startswith("lora/0:local/tiny=503")
    assert gw.fake.state.count("openai", "ft-bob") >= 1
    # no fallback declared: the local app's failure is the answer, never the route's lora-base
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as ei:
            _client(gw, ALL).chat.completions.create(model="lora:carol-down", messages=MSG, stream=stream)
        assert ei.value.status_code == 503
        assert ei.value.response.headers["x-thawline-attempts"] == "1"
    assert gw.fake.state.count("openai", "lora-base") == base_calls


def test_an_adapters_own_limits_apply(gw):
    with pytest.raises(openai.RateLimitError) as ei:
        _client(gw, ALL).chat.completions.create(model="lora:alice-tight", messages=MSG)
    assert "adapter 'lora:alice-tight'" in ei.value.message
    assert _client(gw, ALL).chat.completions.create(model="lora:alice-v2", messages=MSG).choices


def test_usage_groups_by_adapter(gw):
    from typer.testing import CliRunner

    from cluster.cli.main import app as cli

    for _ in range(3):
        _client(gw, ALICE).chat.completions.create(model="lora:alice-count", messages=MSG)
    by = {r["group"]: r for r in _get(gw, "/v1/usage?group_by=adapter")["data"]}
    assert by["alice-count"]["requests"] == 3 and by["alice-count"]["tokens_out"] == 12
    assert by[None]["requests"] >= 1                     # base model requests
    out = CliRunner().invoke(cli, ["usage", "--group-by", "adapter", "--base-url", gw.base + "/v1",
                                   "--admin-key", ADMIN])
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.output.splitlines() if "alice-count" in ln)
    assert " 3 " in f" {line} " and "(base model)" in out.output

    def in_parquet() -> bool:
        files = sorted(str(p) for p in gw.ledger.glob("date=*/*.parquet"))
        rows = ds.dataset(files, format="parquet").to_table().to_pylist() if files else []
        return sum(1 for r in rows if r.get("adapter") == "alice-count") == 3
    wait_for_condition(in_parquet, timeout=20, retry_interval_ms=500)
    page = urllib.request.urlopen(urllib.request.Request(
        gw.base + "/ui", headers={"Authorization": f"Bearer {ADMIN}"}), timeout=30).read().decode()
    assert "alice-count" in page.split('data-table="adapters"')[1].split("</table>")[0]
