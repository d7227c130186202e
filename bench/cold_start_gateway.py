"""bench/cold_start.py's `parked` scenario: the gateway in front of the thawline app, and the
waits that put thawline's engine in the parked tier before each timed request.

The gateway is deployed in the same Serve instance as the apps, at route prefix "/", with one
route ("tiny") to the thawline app over a Serve handle, as tests/e2e/test_parked_tier.py does.
"""
from __future__ import annotations

import hashlib

GATEWAY_KEY = "tl-bench-parked-key"
_ADMIN_KEY = "tl-bench-parked-admin"


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def gateway_app(app: str = "thawline"):
    """`serve_apps.gateway` with one key and one route to `app`; one replica, as deployed."""
    from serve_apps.gateway import build_app

    cfg = {"providers": {"local": {"type": "serve", "app": app}},
           "routes": {"tiny": {"targets": [{"provider": "local", "model": "tiny",
                                            "first_token_timeout_s": 600, "timeout_s": 600}]}},
           "keys": [{"id": "bench", "sha256": _sha(GATEWAY_KEY)}],
           "server": {"admin_key_env": None, "admin_key_sha256": _sha(_ADMIN_KEY)}}
    return build_app(cfg, overrides={"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}})


def gateway_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/completions"


def gateway_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {GATEWAY_KEY}"}


def board_state(port: int, app: str = "thawline") -> dict:
    """The app's readiness board entry (tier, parked count) merged with its last cold start."""
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/{app}/thawline/state", timeout=30).json()


def wait_parked(port: int, replicas, app: str = "thawline", timeout: float = 300) -> None:
    """Until the app's LLMServer has 0 replicas (`replicas(app)`) and the board says tier
    `parked`: the next request is answered from the parked engine."""
    from bench.cold_start_cluster import wait_until

    wait_until(lambda: replicas(app) == 0 and board_state(port, app).get("tier") == "parked", timeout,
               f"{app} to park (0 LLMServer replicas, board tier parked)")
