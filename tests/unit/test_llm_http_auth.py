"""Who may use an LLM app's own HTTP routes (serve_apps/llm/http_auth.py): closed by default,
a bearer token when the app names one, open only on an explicit opt-out."""
from __future__ import annotations

from serve_apps.llm.args import LLMAppArgs
from serve_apps.llm.http_auth import check_http_access

SNAP = "file:///data/snapshots/tiny/latest"


def _args(**kw) -> LLMAppArgs:
    return LLMAppArgs(served_model_id="tiny", snapshot_url=SNAP, **kw)


def test_closed_by_default_even_with_a_bearer():
    for auth in (None, "", "Bearer anything"):
        r = check_http_access(_args(), auth, env={})
        assert r is not None and r.status == 403
        assert r.body["error"]["type"] == "permission_error" and "gateway" in r.body["error"]["message"]


def test_token_env_requires_exactly_that_bearer():
    args = _args(http_auth_token_env="LLM_TOKEN")
    env = {"LLM_TOKEN": "s3cret-token"}
    assert check_http_access(args, "Bearer s3cret-token", env) is None
    assert check_http_access(args, "bearer s3cret-token", env) is None  # the scheme is case-insensitive
    for bad in (None, "", "Bearer", "Bearer s3cret-toke", "Bearer s3cret-token2", "Basic s3cret-token",
                "s3cret-token", "Bearer sk-thawline-demo"):
        r = check_http_access(args, bad, env)
        assert r is not None and r.status == 401, bad
        assert r.body["error"]["code"] == "invalid_api_key" and r.headers == {"www-authenticate": "Bearer"}
        assert "s3cret" not in str(r.body)


def test_unset_or_empty_token_env_closes_instead_of_opening():
    args = _args(http_auth_token_env="LLM_TOKEN")
    for env in ({}, {"LLM_TOKEN": ""}):
        for auth in (None, "Bearer ", "Bearer x"):
            r = check_http_access(args, auth, env)
            assert r is not None and r.status == 401 and "LLM_TOKEN is not set" in r.body["error"]["message"]


def test_opt_out_opens_and_a_token_still_wins():
    assert check_http_access(_args(allow_unauthenticated_http=True), None, env={}) is None
    both = _args(allow_unauthenticated_http=True, http_auth_token_env="LLM_TOKEN")
    assert check_http_access(both, None, env={"LLM_TOKEN": "t"}).status == 401


def test_token_env_name_is_an_env_var_name():
    import pytest
    from pydantic import ValidationError

    for bad in ("", "1ABC", "A-B", "$TOKEN", "A B"):
        with pytest.raises(ValidationError):
            _args(http_auth_token_env=bad)
