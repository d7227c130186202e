"""Bearer keys checked against the hashed store.

Only SHA-256 digests live in config and memory. A lookup hashes the presented key and looks the
digest up in a dict: the dict compare runs on digests, so its timing says nothing about the
secret. The admin key is compared with `hmac.compare_digest`.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from gateway.adapters import AdapterScope
from gateway.config import GatewayConfig, KeyConfig
from gateway.errors import AuthError, PermissionDenied

ANONYMOUS = KeyConfig(id="anonymous", sha256="0" * 64, routes=["*"])


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyAuth:
    def __init__(self, cfg: GatewayConfig, dynamic: list[KeyConfig] | None = None):
        self.configure(cfg, dynamic)

    def configure(self, cfg: GatewayConfig, dynamic: list[KeyConfig] | None = None) -> None:
        """(Re)build from gateway.yaml's keys plus `dynamic` ones (the admin API's key store).
        A gateway.yaml key wins an id clash. Each dict is swapped whole: a request on another
        task sees either the old or the new set, never a half-built one."""
        static = list(cfg.keys)
        ids = {k.id for k in static}
        keys = static + [k for k in (dynamic or []) if k.id not in ids]
        self.config_ids = frozenset(ids)
        self.all_keys: dict[str, KeyConfig] = {k.id: k for k in keys}
        self._by_digest: dict[str, KeyConfig] = {k.sha256: k for k in keys}
        # allowed routes as frozensets so the per-request check is one set lookup
        self._allowed: dict[str, frozenset[str] | None] = {
            k.id: (None if "*" in k.routes else frozenset(k.routes)) for k in keys}
        self._adapters: dict[str, AdapterScope] = {k.id: AdapterScope(k.adapters) for k in keys}
        self._require_auth = cfg.server.require_auth
        admin = cfg.server.admin_key_sha256
        if admin is None and cfg.server.admin_key_env and os.environ.get(cfg.server.admin_key_env):
            admin = hashlib.sha256(os.environ[cfg.server.admin_key_env].encode()).hexdigest()
        self._admin_digest = admin

    def authenticate(self, authorization: str | None) -> KeyConfig:
        # With require_auth off, only a request that sends NO key runs as anonymous. A key that
        # is sent but unknown (or a header that is no bearer key) is still refused: a typo'd or
        # revoked key must not silently lose its own limits, budget and ledger identity.
        if not authorization or not authorization.strip():
            if not self._require_auth:
                return ANONYMOUS
            raise AuthError("missing bearer key: send `Authorization: Bearer <key>`")
        token = _bearer(authorization)
        if token is None:
            raise AuthError("malformed Authorization header: send `Authorization: Bearer <key>`")
        key = self._by_digest.get(hashlib.sha256(token.encode()).hexdigest())
        if key is None:
            raise AuthError("invalid API key")
        return key

    def may_use(self, key: KeyConfig, route: str) -> bool:
        """Whether `key` may call the route alias `route` (keys not in the store, e.g. anonymous, may
        use every route)."""
        allowed = self._allowed.get(key.id)
        return allowed is None or route in allowed

    def may_use_adapter(self, key: KeyConfig, adapter: str) -> bool:
        """Whether `key`'s `adapters` scope allows `adapter` (None: all; [] none; `prefix*`)."""
        scope = self._adapters.get(key.id)
        return (scope if scope is not None else AdapterScope(key.adapters)).allows(adapter)

    def check_route(self, key: KeyConfig, route: str) -> None:
        if not self.may_use(key, route):
            raise PermissionDenied(f"key {key.id!r} may not use model {route!r}", param="model")

    @property
    def admin_digest(self) -> str | None:
        """SHA-256 hex of the admin key; None when no admin key is configured."""
        return self._admin_digest

    def is_admin(self, authorization: str | None) -> bool:
        token = _bearer(authorization)
        if token is None or self._admin_digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), self._admin_digest)
