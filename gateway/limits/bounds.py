"""Per-route bounds on the request fields that decide how much an answer may cost (pure).

Applied to the body before it is pre-charged and forwarded, so what the limiter pre-charges and
the budget reserves is what the upstream receives: both max_tokens fields are
clamped, a default bound is set when the client gives none, `n` is bounded, and `service_tier`
/ `store` values that change price or retention are refused unless the route allows them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import BadRequest

if TYPE_CHECKING:
    from gateway.config import RouteConfig

MAX_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


def apply_route_bounds(body: dict, endpoint: str, route: "RouteConfig") -> int:
    """Bound `body` in place for `route`; return the most output tokens per choice it allows
    (0 for embeddings). Raises BadRequest naming the param for values the route refuses.
    Types were already checked (gateway/validate.py): ints are ints >= 1 where present."""
    if endpoint == "embeddings":
        return 0
    n = body.get("n")
    if n is not None and n > route.max_n:
        raise BadRequest(f"'n' must be at most {route.max_n} on model {body.get('model')!r}", param="n",
                         code="invalid_value")
    tier = body.get("service_tier")
    if tier is not None and tier not in route.allowed_service_tiers:
        raise BadRequest(f"'service_tier' {tier!r} is not allowed on model {body.get('model')!r} "
                         f"(allowed: {', '.join(route.allowed_service_tiers) or 'none'})",
                         param="service_tier", code="invalid_value")
    store = body.get("store")
    if store is not None and store is not False and not route.allow_store:
        raise BadRequest(f"'store' is not allowed on model {body.get('model')!r}", param="store",
                         code="invalid_value")
    for k in MAX_TOKEN_FIELDS:
        if k in body and body[k] is None:
            del body[k]                 # null means "unset" upstream: it must not slip past the cap
    cap = route.max_tokens_cap
    present = [k for k in MAX_TOKEN_FIELDS if k in body]
    if not present:
        body["max_tokens"] = cap if cap is not None else route.default_max_tokens
        return body["max_tokens"]
    if cap is not None:
        # clamp (not reject): SDKs often send a large default; every field an upstream may
        # honour is clamped, whichever one it reads
        for k in present:
            if body[k] > cap:
                body[k] = cap
    return max(body[k] for k in present)
