"""Per-route request bounds (issue 11): what is pre-charged is what the upstream receives (pure)."""
from __future__ import annotations

import pytest

from gateway.config import RouteConfig
from gateway.costs.tokens import estimate_request_tokens
from gateway.errors import BadRequest
from gateway.limits.bounds import apply_route_bounds

T = [{"provider": "p", "model": "m"}]
MSG = [{"role": "user", "content": "hi"}]


def _route(**kw) -> RouteConfig:
    return RouteConfig(targets=T, **kw)


@pytest.mark.parametrize("given", [
    {"max_completion_tokens": 1, "max_tokens": 100000},
    {"max_completion_tokens": None, "max_tokens": 100000},
    {"max_tokens": None, "max_completion_tokens": 100000},
    {"max_tokens": 100000},
])
def test_both_max_token_fields_are_clamped(given):
    body = {"model": "r", "messages": MSG, **given}
    most = apply_route_bounds(body, "chat", _route(max_tokens_cap=2))
    assert most <= 2
    assert all(body[k] <= 2 for k in ("max_tokens", "max_completion_tokens") if k in body)
    assert None not in body.values()
    # the pre-charge counts what is forwarded
    assert estimate_request_tokens(body, endpoint="chat", max_tokens_cap=2) == 1 + 4 + most


def test_default_bound_when_the_route_has_no_cap():
    body = {"model": "r", "messages": MSG}
    assert apply_route_bounds(body, "chat", _route()) == 4096 and body["max_tokens"] == 4096
    body = {"model": "r", "messages": MSG}
    assert apply_route_bounds(body, "chat", _route(default_max_tokens=64)) == 64
    body = {"model": "r", "messages": MSG}
    assert apply_route_bounds(body, "chat", _route(max_tokens_cap=32)) == 32 and body["max_tokens"] == 32
    body = {"model": "r", "input": "x"}
    assert apply_route_bounds(body, "embeddings", _route()) == 0 and "max_tokens" not in body


def test_n_is_bounded_and_multiplies_the_pre_charge():
    body = {"model": "r", "messages": MSG, "n": 9, "max_tokens": 10}
    with pytest.raises(BadRequest) as ei:
        apply_route_bounds(body, "chat", _route())
    assert ei.value.param == "n" and ei.value.status == 400
    body = {"model": "r", "messages": MSG, "n": 3, "max_tokens": 10}
    apply_route_bounds(body, "chat", _route(max_n=3))
    assert estimate_request_tokens(body, endpoint="chat") == 5 + 3 * 10


@pytest.mark.parametrize("field,value,allow", [
    ("service_tier", "priority", {"allowed_service_tiers": ["auto", "default", "priority"]}),
    ("service_tier", "flex", {"allowed_service_tiers": ["flex"]}),
    ("store", True, {"allow_store": True}),
])
def test_price_or_retention_changing_options_need_the_route_to_allow_them(field, value, allow):
    body = {"model": "r", "messages": MSG, field: value}
    with pytest.raises(BadRequest) as ei:
        apply_route_bounds(body, "chat", _route())
    assert ei.value.param == field and ei.value.to_dict()["error"]["param"] == field
    apply_route_bounds(dict(body), "chat", _route(**allow))


def test_harmless_values_pass():
    body = {"model": "r", "messages": MSG, "service_tier": "default", "store": False, "n": 8}
    apply_route_bounds(body, "chat", _route())
    assert body["service_tier"] == "default" and body["store"] is False
