"""Cross-process names, one owner each: the Ray namespace and named actors the gateway and the
serve apps share, and the environment variables they read.

The gateway, the LLM app (serve_apps/), the CLI (cluster/), benches and tests all find the same
detached actors by these names; a name written out twice is a name that can drift. Dependency
direction: serve_apps and cluster import gateway, never the reverse, so this module lives here;
snapshots/ imports neither, so its own env vars (THAWLINE_CACHE_DIR, THAWLINE_ENGINE_DIR,
THAWLINE_HEARTBEAT_S, ...) stay in snapshots/.

No Ray import at module level: the pure modules (and the unit tier) import the names.
"""
from __future__ import annotations

import hashlib
from typing import Any

# -- Ray namespace and named actors (docs/INTERFACES.md) ----------------------------------------

NAMESPACE = "thawline"
READINESS_ACTOR = "thawline-readiness"       # gateway.readiness.ReadinessBoard (one per cluster)
LIMITS_ACTOR = "thawline-limits"             # gateway.limits.broker.LimitBroker (one per cluster)
_LEDGER_PREFIX = "thawline-ledger-"          # gateway.costs.ledger_actor.LedgerActor, per ledger URL
_BREAKERS_PREFIX = "thawline-breakers-"      # gateway.breaker_actor.BreakerBoard, per gateway app
_WARM_POOL_PREFIX = "thawline-warm-pool-"    # serve_apps.llm.warm_pool.WarmPool, per node

# -- Serve deployment names of an LLM app (serve_apps/llm/builder.py) --------------------------------
LLM_SERVER_DEPLOYMENT = "LLMServer"  # the replicas that hold an engine and scale to zero


def ledger_actor_name(url: str | None) -> str:
    """One ledger actor per ledger URL: two gateways (or two tests) with different ledgers never mix."""
    return _LEDGER_PREFIX + hashlib.sha256((url or "memory").encode()).hexdigest()[:10]


def breakers_actor_name(app_name: str) -> str:
    """One breaker board per gateway app: all its replicas share each target's breaker."""
    return _BREAKERS_PREFIX + app_name


def warm_pool_name(node_id: str) -> str:
    """One warm pool of engine hosts per node."""
    return _WARM_POOL_PREFIX + node_id


# -- environment variables read by the gateway, its client/CLI and the serve apps --------------

API_KEY_ENV = "THAWLINE_API_KEY"             # client/CLI: the gateway key
BASE_URL_ENV = "THAWLINE_BASE_URL"           # client/CLI: the gateway's OpenAI base URL
ADMIN_KEY_ENV = "THAWLINE_ADMIN_KEY"         # gateway (server.admin_key_env default) and client/CLI


# -- the one way a named actor is made -------------------------------------------------------------

def get_or_create_actor(cls: type, name: str, *init_args: Any, namespace: str = NAMESPACE,
                        **options: Any):
    """The handle of the actor `name` in `namespace`, created from the plain class `cls` (with
    `init_args`) by its first caller. `ray.remote` is applied here, at creation, so `cls` stays a
    plain class that unit tests drive without Ray.

    Defaults: detached (a shared actor must outlive whichever replica happened to create it) and
    num_cpus=0 (a bookkeeping actor must never wait behind, or block, engine placement groups).
    `options` are Ray actor options and override the defaults (max_restarts, max_concurrency,
    scheduling_strategy, ...). Racing creators get the same actor (get_if_exists)."""
    import ray

    opts = {"lifetime": "detached", "num_cpus": 0, **options}
    return ray.remote(cls).options(name=name, namespace=namespace, get_if_exists=True, **opts).remote(*init_args)
