"""`import_path: serve_apps.llm:app` — one scale-to-zero LLM app, restored from a snapshot.

    applications:
      - name: tiny
        route_prefix: /tiny
        import_path: serve_apps.llm:app
        args: {served_model_id: tiny, snapshot_url: file:///abs/snapshots/tiny/latest}

Two deployments: `LLMRouter` (ingress, always one light replica, no engine) and `LLMServer`
(the engine, autoscaled from zero, one placement group per replica with one bundle per TP rank,
STRICT_PACK). Args schema: serve_apps/llm/args.py.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from gateway.names import LLM_SERVER_DEPLOYMENT
from serve_apps.llm.args import LLMAppArgs, metrics_env, server_deployment_options
from serve_apps.llm.router import LLMRouter
from serve_apps.llm.server import LLMServer


log = logging.getLogger("thawline.serve")


def build_app(cfg: LLMAppArgs, *, overrides: dict[str, Any] | None = None) -> Application:
    """The Serve application for `cfg`; `overrides` are extra LLMServer deployment options."""
    # The builder runs with the app's runtime_env applied: check the env that makes
    # scale-from-zero prompt (see args.metrics_env) is there.
    missing = [k for k in metrics_env(cfg) if k not in os.environ]
    if missing:
        log.warning("thawline: %s not set in the app's runtime_env: Serve pushes load every 10 s, "
                    "so a request at zero replicas waits up to that long before a replica starts",
                    ", ".join(missing))
    args = cfg.model_dump()
    server = serve.deployment(LLMServer).options(
        name=LLM_SERVER_DEPLOYMENT, **{**server_deployment_options(cfg), **(overrides or {})}).bind(args)
    router = serve.deployment(LLMRouter).options(
        name="LLMRouter", num_replicas=1, max_ongoing_requests=10_000,
        ray_actor_options={"num_cpus": 0},
    ).bind(server, args)
    return router


def app(args: dict[str, Any]) -> Application:
    """Builder `serve deploy` calls with the YAML's `args:`."""
    try:
        cfg = LLMAppArgs.model_validate(args or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "args"
        raise ValueError(f"serve_apps.llm:app args invalid: {where}: {first['msg']}") from None
    return build_app(cfg)
