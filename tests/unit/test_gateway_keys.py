"""Bearer key checks (gateway/key_auth.py), with and without `require_auth`."""
from __future__ import annotations

import hashlib

import pytest

from gateway.config import parse_config
from gateway.errors import AuthError
from gateway.key_auth import ANONYMOUS, KeyAuth

KEY, ADMIN = "tl-unit-key", "tl-unit-admin"


def _store(require_auth: bool) -> KeyAuth:
    return KeyAuth(parse_config({
        "providers": {"up": {"type": "openai"}},
        "routes": {"r": {"targets": [{"provider": "up", "model": "m"}]}},
        "keys": [{"id": "k1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        "server": {"require_auth": require_auth, "admin_key_sha256": hashlib.sha256(ADMIN.encode()).hexdigest()},
    }))


@pytest.mark.parametrize("require_auth", [True, False])
def test_valid_key_is_its_own_identity(require_auth):
    assert _store(require_auth).authenticate(f"Bearer {KEY}").id == "k1"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_without_require_auth_only_a_missing_key_is_anonymous(header):
    assert _store(False).authenticate(header) is ANONYMOUS
    with pytest.raises(AuthError):
        _store(True).authenticate(header)


@pytest.mark.parametrize("header", ["Bearer wrong-key", "Bearer " + KEY + "x", "Basic dXNlcjpwYXNz", "Bearer ",
                                    "wrong-key"])
@pytest.mark.parametrize("require_auth", [True, False])
def test_a_key_that_is_sent_but_unknown_is_401_even_without_require_auth(header, require_auth):
    with pytest.raises(AuthError) as ei:
        _store(require_auth).authenticate(header)
    assert ei.value.status == 401 and ei.value.to_dict()["error"]["type"] == "invalid_request_error"
    assert ei.value.to_dict()["error"]["code"] == "invalid_api_key"


def test_admin_key():
    s = _store(True)
    assert s.is_admin(f"Bearer {ADMIN}") and not s.is_admin(f"Bearer {KEY}") and not s.is_admin(None)
