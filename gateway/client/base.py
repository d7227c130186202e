"""What the blocking and the async client share: pure request building, answer checking and
the constructor (transport choice, keys from the environment)."""
from __future__ import annotations

import os
from typing import Any, Iterable, Self, TypeVar

from pydantic import BaseModel

from gateway.client.transport import RawResponse
from gateway.client.types import ResponseMeta, with_meta
from gateway.errors import Unavailable, error_from_response
from gateway.names import ADMIN_KEY_ENV, API_KEY_ENV, BASE_URL_ENV

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_TIMEOUT_S = 600.0  # a cold start of a large TP model takes minutes; the gateway bounds it anyway

C = TypeVar("C", bound=BaseModel)


# ------------------------------------------------------------------------ pure request building

def normalize_base_url(base_url: str) -> str:
    """Accept the same base URL the openai SDK takes (`.../v1`); paths below carry `/v1` themselves."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def as_messages(messages: str | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]


def build_body(model: str, stream: bool, fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    body.update({k: v for k, v in fields.items() if v is not None})
    body.update(extra)
    if stream:
        body["stream"] = True
        # Ask for the final usage chunk so streamed calls report tokens like non-streamed ones.
        body.setdefault("stream_options", {"include_usage": True})
    return body


def usage_params(group_by: str | None, since: str | float | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if group_by:
        params["group_by"] = group_by
    if since is not None:
        params["since"] = str(since)
    return params


def check(raw: RawResponse) -> None:
    if raw.status >= 400:
        raise error_from_response(raw.status, raw.headers, raw.body)
    if not isinstance(raw.body, dict):
        raise Unavailable.received_from(f"gateway answered {raw.status} with a non-JSON body",
                                        status=raw.status, body=raw.body)


def parse(model_cls: type[C], raw: RawResponse) -> C:
    check(raw)
    return with_meta(model_cls.model_validate(raw.body), ResponseMeta(headers=raw.headers,
                                                                      elapsed_s=raw.elapsed_s))


# ---------------------------------------------------------------------------------- clients

class ClientBase:
    # What Client and AsyncClient share: everything but the calls themselves, which are sync in
    # one and coroutines in the other. Each names its pair of transports.
    _http_transport: type
    _handle_transport: type

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 handle: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if handle is not None:
            self._t: Any = self._handle_transport(handle)
        else:
            url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
            self._t = self._http_transport(normalize_base_url(url), timeout_s)

    @classmethod
    def from_app(cls, app_name: str = "gateway", api_key: str | None = None) -> Self:
        from ray import serve  # only the in-cluster path needs Ray

        return cls(api_key=api_key, handle=serve.get_app_handle(app_name))

    @property
    def base_url(self) -> str:
        return self._t.base_url

    def _headers(self, key: str | None = None) -> dict[str, str]:
        key = key if key is not None else self.api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    def _admin_key(self, admin_key: str | None) -> str | None:
        return admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV, self.api_key)
