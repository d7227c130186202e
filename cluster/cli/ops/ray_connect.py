"""Connecting the operator CLI to a Ray 2.60 cluster, which has token auth on by default.

A cluster started by `ray start` / `ray.init()` writes its token to ~/.ray/auth_token (or
RAY_AUTH_TOKEN_PATH), but a *client* process only sends it when RAY_AUTH_MODE=token is set in its
own environment; without it every dashboard call fails with "Missing authentication token" and
`ray.init(address=...)` is refused. The CLI therefore turns token mode on when a token is there
and the user has not chosen a mode (RAY_AUTH_MODE=disabled still opts out).
"""
from __future__ import annotations

import os
from pathlib import Path


def token_available(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = env.get("RAY_AUTH_TOKEN_PATH") or str(Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token")
    return Path(path).is_file()


def use_token_auth_if_available(env: dict[str, str] | None = None) -> bool:
    """Set RAY_AUTH_MODE=token in `env` (default os.environ) when unset and a token exists."""
    env = os.environ if env is None else env
    if "RAY_AUTH_MODE" in env or not token_available(env):
        return False
    env["RAY_AUTH_MODE"] = "token"
    return True
