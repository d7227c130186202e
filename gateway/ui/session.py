"""The /ui login cookie: a signed, expiring session token, never the admin key itself.

token = "<expiry unix s>.<random nonce>.<HMAC-SHA256 hex over the first two parts>"

The signing key is derived from the admin key (HMAC with a fixed label), so every gateway
replica given the same admin key accepts a token any of them minted, with no shared state, and
rotating the admin key ends every session. A gateway that knows only the admin key's SHA-256
(`server.admin_key_sha256`) has nothing secret to derive from (that digest sits in gateway.yaml),
so it signs with a random key of its own process instead: sessions then hold on the replica
that minted them, and a visit to another replica asks for the key again.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time

SESSION_S = 12 * 3600
_LABEL = b"thawline-ui-session-v1"
_PROCESS_SECRET = secrets.token_bytes(32)


def signing_key(admin_key: str | None, admin_digest: str) -> bytes:
    """The HMAC key for session tokens: from the raw admin key when this process has it, and
    bound to the admin key's digest either way (a new admin key ends every session)."""
    secret = admin_key.encode() if admin_key else _PROCESS_SECRET
    return hmac.new(secret, _LABEL + b"\0" + admin_digest.encode(), hashlib.sha256).digest()


def admin_key_from_env(env_name: str | None) -> str | None:
    return os.environ.get(env_name) or None if env_name else None


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def mint(key: bytes, now: float | None = None, ttl_s: int = SESSION_S) -> str:
    payload = f"{int((time.time() if now is None else now) + ttl_s)}.{secrets.token_hex(16)}"
    return f"{payload}.{_mac(key, payload)}"


def valid(key: bytes, token: str | None, now: float | None = None) -> bool:
    """True for an unexpired token signed with `key`; False for anything else, never an error."""
    if not token or len(token) > 200:
        return False
    payload, _, mac = token.rpartition(".")
    expiry, _, nonce = payload.partition(".")
    if not (expiry.isdigit() and nonce and mac):
        return False
    if not hmac.compare_digest(mac, _mac(key, payload)):
        return False
    return int(expiry) > (time.time() if now is None else now)


def over_tls(scope) -> bool:
    """The browser reached us over HTTPS: directly, or through a TLS-terminating load balancer
    that says so in X-Forwarded-Proto (it only adds `Secure` to the cookie, so trusting it is safe)."""
    if scope.get("scheme") == "https":
        return True
    for k, v in scope.get("headers") or ():
        if k == b"x-forwarded-proto":
            return v.decode("latin-1").split(",")[0].strip().lower() == "https"
    return False


def cookie_header(name: str, token: str, secure: bool, ttl_s: int = SESSION_S) -> bytes:
    attrs = f"{name}={token}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={ttl_s}"
    return (attrs + ("; Secure" if secure else "")).encode()
