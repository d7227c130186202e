"""Who may use an LLM app's own HTTP routes (the Serve proxy's `route_prefix`, or a replica's
direct-ingress port).

The gateway calls the app through a Serve DeploymentHandle, never over HTTP, and owns auth,
limits, budgets and the ledger. So the app's HTTP routes are closed unless the operator chose:
- `http_auth_token_env`: a bearer token (read from that env var on the replica's node) that every
  HTTP request must carry; an unset variable closes the routes instead of opening them;
- `allow_unauthenticated_http: true`: open to anyone who reaches them (tests, benchmarks).
Closed matters even with `route_prefix: null`: with Serve's direct ingress, should an operator turn
it on (RAY_SERVE_ENABLE_HA_PROXY / RAY_SERVE_THROUGHPUT_OPTIMIZED; not shipped), Serve gives every
app's ingress replica its own HTTP port.

Pure logic (no Ray, no FastAPI): the router turns a refusal into its JSON response.
"""
from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Mapping

from gateway.llm_protocol import error_body
from serve_apps.llm.args import LLMAppArgs


@dataclass(frozen=True)
class Refusal:
    status: int
    body: dict
    headers: dict[str, str]


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def check_http_access(args: LLMAppArgs, authorization: str | None,
                      env: Mapping[str, str] | None = None) -> Refusal | None:
    """None when the request may go on, else the OpenAI-shaped refusal to answer."""
    env = os.environ if env is None else env
    if args.http_auth_token_env:
        expected = env.get(args.http_auth_token_env, "")
        given = _bearer(authorization)
        if expected and given and hmac.compare_digest(given.encode(), expected.encode()):
            return None
        why = ("invalid or missing bearer token" if expected else
               f"HTTP access needs a token, but {args.http_auth_token_env} is not set on this replica's node")
        return Refusal(401, error_body(why, 401, "authentication_error", code="invalid_api_key"),
                       {"www-authenticate": "Bearer"})
    if args.allow_unauthenticated_http:
        return None
    return Refusal(403, error_body(
        "this LLM app takes no direct HTTP requests: call it through the gateway (or set the app's "
        "http_auth_token_env)", 403, "permission_error", code="http_access_disabled"), {})
