"""LoRA adapters through the gateway, the pure parts: "<route>:<adapter>" splitting, key scopes and
per-route entries, config validation, the adapter chain (fallback only to declared targets), the
404 body, the CLI's pieces. No Ray, no I/O."""
from __future__ import annotations

import json
import time

import pytest

from gateway.adapters import AdapterRules, AdapterScope, adapter_scope, model_not_found_error, split_route
from gateway.config import ConfigError, KeyConfig, parse_config
from gateway.llm_protocol import model_not_found, split_adapter_model
from gateway.routes import compile_routes

SHA = "0" * 64


def _cfg(**route_extra) -> dict:
    return {"providers": {"local": {"type": "serve", "app": "tiny-app"},
                          "oa": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9"}},
            "routes": {"tiny": {"targets": [{"provider": "local", "model": "tiny"},
                                            {"provider": "oa", "model": "gpt-base"}], **route_extra},
                       "ft:base:org:id": {"targets": [{"provider": "local", "model": "tiny"}]},
                       "hosted": {"targets": [{"provider": "oa", "model": "gpt-base"}]}}}


def test_model_splitting_uses_the_protocol_and_tolerates_colons_in_aliases():
    routes = parse_config(_cfg()).routes
    assert split_adapter_model("tiny:alice-v1") == ("tiny", "alice-v1")
    assert split_route("tiny:alice-v1", routes) == ("tiny", "alice-v1")
    assert split_route("tiny", routes) is None and split_route("tiny:", routes) is None
    assert split_route("nope:alice", routes) is None
    # an alias holding ':' itself: adapter names never do, so the last ':' splits
    assert split_route("ft:base:org:id:alice", routes) == ("ft:base:org:id", "alice")


def test_rules_exact_beats_prefix_and_longest_prefix_wins():
    r = AdapterRules({"alice-*": "A", "alice-special": "S", "alice-team-*": "T", "*": "ALL"})
    assert r.match("alice-special") == "S"
    assert r.match("alice-team-x") == "T"
    assert r.match("alice-v1") == "A"
    assert r.match("bob") == "ALL"
    assert AdapterRules({"alice-*": 1}).match("bob") is None
    assert not AdapterRules({}) and AdapterRules({"x": 1})


@pytest.mark.parametrize("patterns, name, allowed", [
    (None, "anything", True), ([], "alice-v1", False), (["alice-*"], "alice-v1", True),
    (["alice-*"], "bob-v1", False), (["bob-v1"], "bob-v1", True), (["bob-v1"], "bob-v10", False),
    (["*"], "x", True),
])
def test_key_scope(patterns, name, allowed):
    assert AdapterScope(patterns).allows(name) is allowed


def test_key_and_route_adapter_config_validation():
    assert KeyConfig(id="k", sha256=SHA, adapters=["alice-*", "bob-v1", "*"]).adapters == ["alice-*", "bob-v1", "*"]
    assert KeyConfig(id="k", sha256=SHA).adapters is None
    for bad in (["a:b"], ["al*ce"], ["**"], ["-x"], [""]):
        with pytest.raises(ValueError):
            KeyConfig(id="k", sha256=SHA, adapters=bad)
    ok = parse_config(_cfg(adapters={"alice-*": {"limits": {"rpm": 5}, "budget": {"usd_per_day": 1},
                                                 "fallback": [{"provider": "oa", "model": "ft-alice"}]}}))
    assert ok.routes["tiny"].adapters["alice-*"].fallback[0].model == "ft-alice"
    assert parse_config(_cfg()).routes["tiny"].adapters == {}
    with pytest.raises(ConfigError, match=r"adapters\.alice-\*\.fallback\.0\.provider: unknown provider 'nope'"):
        parse_config(_cfg(adapters={"alice-*": {"fallback": [{"provider": "nope", "model": "m"}]}}))
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(_cfg(adapters={"alice-*": {"limit": {"rpm": 5}}}))
    with pytest.raises(ConfigError, match="invalid adapter name or prefix"):
        parse_config(_cfg(adapters={"a:b": {}}))
    cfg = _cfg()
    cfg["routes"]["hosted"]["adapters"] = {"x": {}}
    with pytest.raises(ConfigError, match="routes.hosted.adapters: the route has no `serve` target"):
        parse_config(cfg)


def test_adapter_chain_is_serve_targets_then_only_declared_fallback():
    cfg = parse_config(_cfg(adapters={"bob-*": {"fallback": [{"provider": "oa", "model": "ft-bob"}]},
                                      "carol": {"limits": {"rpm": 3}}}))
    route = compile_routes(cfg)["tiny"]
    assert [t.provider_name for t in route.serve_targets] == ["local"]
    bob = route.for_adapter("bob-v1")
    assert bob is route.for_adapter("bob-v1")                       # built once
    chain = list(bob.order())
    assert [(t.provider_name, t.model, t.adapter) for t in chain] == [("local", "tiny", "bob-v1"),
                                                                      ("oa", "ft-bob", None)]
    assert chain[0].id == route.order()[0].id                        # one breaker per serve target
    assert chain[1].id == "tiny:bob-*/0:oa/ft-bob"
    assert bob.alias == "tiny" and bob.adapter == "bob-v1" and bob.model == "tiny:bob-v1" and bob.quota is None
    # no entry, or an entry without fallback: the serve target alone, never the base's gpt-base
    for name in ("carol", "dave"):
        assert [(t.provider_name, t.adapter) for t in route.for_adapter(name).order()] == [("local", name)]
    carol = route.for_adapter("carol")
    assert carol.quota.scope == "adapter:tiny:carol" == adapter_scope("tiny", "carol")
    assert carol.quota.limits.rpm == 3 and carol.quota.budget is None
    assert route.adapter is None and [t.model for t in route.order()] == ["tiny", "gpt-base"]
    assert {t.id for t in route.all_targets()} >= {"tiny:bob-*/0:oa/ft-bob"}


def test_not_found_is_byte_identical_to_the_apps():
    for model in ("tiny:alice-v1", "nope"):
        e = model_not_found_error(model)
        assert e.status == 404 and e.code == "model_not_found"
        assert e.to_json() == json.dumps(model_not_found(model).body).encode()


def test_resolving_an_adapter_does_not_grow_with_the_listing():
    """1,000 adapters listed and 1,000 route entries: resolving one is dict and set lookups."""
    from gateway.app import Gateway
    from gateway.providers.base import Provider

    names = [f"user{i}-v1" for i in range(1000)]
    entries = {n: {"limits": {"rpm": 100}} for n in names}
    cfg = parse_config({**_cfg(adapters=entries), "keys": [
        {"id": "k", "sha256": SHA, "adapters": ["user1*", "user2*", "user3*", "team-*"]}]})
    local = Provider("local", cfg.providers["local"])
    small = Provider("local", cfg.providers["local"])
    local.adapters, small.adapters = frozenset(names), frozenset(names[:3])
    key = cfg.keys[0]

    def per_call(provider) -> float:
        gw = Gateway(cfg, limits=None, costs=None, providers={"local": provider, "oa": Provider("oa", cfg.providers["oa"])})
        inf = gw._inference
        for n in names[:200]:
            if AdapterScope(key.adapters).allows(n) and n in provider.adapters:
                inf._resolve(key, f"tiny:{n}")                   # the first call builds the chain
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(200):
                inf._resolve(key, "tiny:user1-v1")
            best = min(best, (time.perf_counter() - t0) / 200)
        return best

    big, base = per_call(local), per_call(small)
    assert big < 1e-3 and big - base < 1e-3, (big, base)
    # how: the listing is a set, the entries a dict (plus the few prefix patterns)
    assert isinstance(local.adapters, frozenset)
    assert len(compile_routes(cfg)["tiny"].adapter_rules.exact) == 1000


def test_usage_cli_groups_match_the_gateway():
    from cluster.cli.ops.commands import BASE_MODEL, GROUPS, usage_table
    from gateway.costs.usage import GROUP_COLUMNS

    assert set(GROUPS) == set(GROUP_COLUMNS) and "adapter" in GROUPS
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(usage_table([{"group": "alice-v1", "requests": 2, "cost_usd": 0.5},
                               {"group": None, "requests": 1, "cost_usd": 0.1}], "adapter"))
    out = console.export_text()
    assert "alice-v1" in out and BASE_MODEL in out and "Cost ledger by adapter" in out


def test_keys_cli_adapter_scope_body():
    from cluster.cli.errors import CLIError
    from cluster.cli.keys import adapters_body

    assert adapters_body(["alice-*", "bob-v1,carol"]) == {"adapters": ["alice-*", "bob-v1", "carol"]}
    assert adapters_body(None) == {} and adapters_body(None, no_adapters=True) == {"adapters": []}
    assert adapters_body(None, all_adapters=True) == {"adapters": None}
    with pytest.raises(CLIError):
        adapters_body(["x"], no_adapters=True)


async def test_the_serve_provider_keeps_the_boards_listing_as_a_set():
    from types import SimpleNamespace

    from gateway.providers.serve import ServeProvider

    cfg = parse_config(_cfg()).providers["local"]
    p = ServeProvider("local", cfg)
    asked = []

    async def listing(app):
        asked.append(app)
        return ["bob", "alice"]

    await p._poll_adapters(SimpleNamespace(adapters=SimpleNamespace(remote=listing)))
    assert p.adapters == frozenset({"alice", "bob"}) and asked == ["tiny-app"]

    async def broken(app):
        raise RuntimeError("board restarting")

    await p._poll_adapters(SimpleNamespace(adapters=SimpleNamespace(remote=broken)))
    assert p.adapters == frozenset({"alice", "bob"})            # the last listing stays
    await p._poll_adapters(SimpleNamespace())                    # a board from before adapters existed
    assert p.adapters == frozenset({"alice", "bob"})
    # the handle request names the adapter apart; the body keeps the target's model
    from gateway.routes import compile_routes
    t = compile_routes(parse_config(_cfg()))["tiny"].for_adapter("alice").order()[0]
    wire = p._request("chat", {"model": "tiny:alice", "messages": []}, t, stream=False)
    assert wire["adapter"] == "alice" and wire["body"]["model"] == "tiny"
