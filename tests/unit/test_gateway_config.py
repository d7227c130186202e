"""gateway.yaml schema: strict keys, errors that name the bad key, cross-references checked."""
from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config, parse_config

BASE = {
    "providers": {"oa": {"type": "openai", "api_key_env": "OPENAI_API_KEY"},
                  "local": {"type": "serve", "app": "tiny", "usd_per_hour": 1.5}},
    "routes": {"fast": {"targets": [{"provider": "local", "model": "tiny"},
                                    {"provider": "oa", "model": "gpt-4o-mini", "max_retries": 1}],
                        "spillover_when_cold": True, "limits": {"rpm": 10}, "budget": {"usd_per_day": 5}}},
    "keys": [{"id": "team-a", "sha256": "a" * 64, "routes": ["fast"], "limits": {"tpm": 1000}}],
}


def _with(path: str, value) -> dict:
    import copy
    cfg = copy.deepcopy(BASE)
    node = cfg
    *parents, last = path.split(".")
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[last] = value
    return cfg


def test_valid_config_parses_with_defaults():
    cfg = parse_config(BASE)
    assert cfg.providers["oa"].base_url == "https://api.openai.com/v1"
    assert cfg.routes["fast"].targets[0].first_token_timeout_s == 30.0
    assert cfg.routes["fast"].limits.rpm == 10
    assert cfg.retry.budget == 3 and cfg.breaker.consecutive_failures == 5


@pytest.mark.parametrize("path, value, expect", [
    ("routes.fast.targets.0.timout_s", 3, "routes.fast.targets.0.timout_s: unknown key"),
    ("providers.oa.api_key", "sk-x", "providers.oa.api_key: unknown key"),
    ("routes.fast.limits.rps", 3, "routes.fast.limits.rps: unknown key"),
    ("keys.0.budget", {"usd_per_week": 1}, "keys.0.budget.usd_per_week: unknown key"),
    ("routes.fast.targets.0.timeout_s", "soon", "routes.fast.targets.0.timeout_s"),
    ("providers.oa.type", "azure", "providers.oa.type"),
])
def test_errors_name_the_bad_key(path, value, expect):
    with pytest.raises(ConfigError) as ei:
        parse_config(_with(path, value))
    msg = str(ei.value)
    assert expect in msg
    assert "\n" not in msg   # one line for the CLI


def test_cross_references_are_checked():
    with pytest.raises(ConfigError, match=r"routes\.fast\.targets\.1\.provider: unknown provider 'nope'"):
        parse_config(_with("routes.fast.targets.1.provider", "nope"))
    with pytest.raises(ConfigError, match=r"keys\.0\.routes: unknown route 'slow'"):
        parse_config(_with("keys.0.routes", ["slow"]))
    with pytest.raises(ConfigError, match="needs `base_url`"):
        parse_config(_with("providers.oa", {"type": "openai_compatible"}))
    with pytest.raises(ConfigError, match="needs `app`"):
        parse_config(_with("providers.local", {"type": "serve"}))


def test_load_config_yaml_errors_are_one_line(tmp_path):
    p = tmp_path / "gateway.yaml"
    p.write_text("providers: [\n  unclosed")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_example_config_ships_valid():
    from pathlib import Path
    cfg = load_config(Path(__file__).resolve().parents[2] / "serve_apps/configs/gateway-example.yaml")
    assert cfg.routes and cfg.providers


def test_gateway_serve_config_points_at_a_valid_gateway_yaml():
    """serve_apps/configs/gateway-serve.yaml: the gateway app's args and the gateway.yaml it names
    validate, and the local provider names an app the same file deploys."""
    from pathlib import Path

    import yaml

    configs = Path(__file__).resolve().parents[2] / "serve_apps" / "configs"
    doc = yaml.safe_load((configs / "gateway-serve.yaml").read_text())
    apps = {a["name"]: a for a in doc["applications"]}
    gw = apps["gateway"]
    assert gw["import_path"] == "serve_apps.gateway:app"
    assert set(gw["args"]) <= {"config_path", "config", "deployment"}
    cfg = load_config(configs / gw["args"]["config_path"])
    local = [p.app for p in cfg.providers.values() if p.type == "serve"]
    assert local and all(a in apps for a in local)
    # a route's max_tokens_cap is sent upstream when a request has no max_tokens: vLLM rejects
    # one above the served model's max_model_len (the README's SDK snippet sends none)
    for name, route in cfg.routes.items():
        for t in route.targets:
            provider = cfg.providers[t.provider]
            if provider.type == "serve" and route.max_tokens_cap:
                limit = apps[provider.app]["args"].get("engine_overrides", {}).get("max_model_len")
                assert limit is None or route.max_tokens_cap < limit, (name, route.max_tokens_cap, limit)


def _renamed(section: str, old: str, new: str) -> dict:
    import copy
    cfg = copy.deepcopy(BASE)
    cfg[section][new] = cfg[section].pop(old)
    if section == "providers":
        for t in cfg["routes"]["fast"]["targets"]:
            if t["provider"] == old:
                t["provider"] = new
    else:
        cfg["keys"][0]["routes"] = [new]
    return cfg


@pytest.mark.parametrize("make, where", [
    (lambda bad: _renamed("routes", "fast", bad), "routes"),
    (lambda bad: _renamed("providers", "oa", bad), "providers"),
    (lambda bad: _with("keys.0.id", bad), "keys.0.id"),
    (lambda bad: _with("providers.local.app", bad), "providers.local.app"),
    (lambda bad: _with("providers.local.deployment", bad), "providers.local.deployment"),
])
@pytest.mark.parametrize("bad", ["m\n", "m\r\n", "\nm", "m x", "", "-m", "m\x00"])
def test_bad_names_are_rejected_whole_string(make, where, bad):
    # `re.match(r"^...$")` accepts "m\n" ($ matches before a trailing newline): names are fullmatched
    with pytest.raises(ConfigError) as ei:
        parse_config(make(bad))
    msg = str(ei.value)
    assert msg.startswith(f"gateway config: {where}") and "invalid" in msg
    assert "\n" not in msg and "\r" not in msg   # still one line for the CLI, the bad name repr'd


def test_good_names_and_model_like_route_aliases_pass():
    cfg = parse_config(_renamed("routes", "fast", "meta-llama/Llama-3.1-8B-Instruct"))
    assert "meta-llama/Llama-3.1-8B-Instruct" in cfg.routes
    for alias in ("ft:gpt-4o-mini:org:custom:abc", "claude-3-5-haiku@20241022", "m.v2_b"):
        assert alias in parse_config(_renamed("routes", "fast", alias)).routes
    assert parse_config(_with("keys.0.id", "team_a.prod-1")).keys[0].id == "team_a.prod-1"
    with pytest.raises(ConfigError, match="invalid name"):
        parse_config(_renamed("providers", "oa", "open/ai"))   # '/' separates parts of target ids


def test_store_urls_expand_env_like_the_llm_args(monkeypatch):
    """The shipped gateway-example.yaml keeps its key store and ledger under $THAWLINE_DEMO_DIR;
    validation keeps the reference, the app builder expands it (expand_store_urls)."""
    from pathlib import Path

    from gateway.config import expand_store_urls
    path = Path(__file__).resolve().parents[2] / "serve_apps/configs/gateway-example.yaml"
    monkeypatch.setenv("THAWLINE_DEMO_DIR", "/srv/demo")
    raw = load_config(path)
    assert raw.key_store is not None and "${THAWLINE_DEMO_DIR" in raw.key_store.url
    cfg = expand_store_urls(raw)
    assert cfg.key_store.url == "file:///srv/demo/keys"
    assert cfg.ledger.url == "file:///srv/demo/ledger"
    monkeypatch.delenv("THAWLINE_DEMO_DIR")
    assert expand_store_urls(load_config(path)).key_store.url == "file:///tmp/thawline-demo/keys"
    assert expand_store_urls(raw, {"THAWLINE_DEMO_DIR": "/x"}).ledger.url == "file:///x/ledger"
    unset = parse_config(_with("key_store", {"url": "file://${NOPE_UNSET}/keys"}))   # valid as written
    with pytest.raises(ConfigError, match=r"key_store\.url: environment variable NOPE_UNSET is not set"):
        expand_store_urls(unset)
