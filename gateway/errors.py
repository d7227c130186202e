"""Gateway errors, each rendering to OpenAI's error JSON shape.

`{"error": {"message": str, "type": str, "param": str|None, "code": str|None}}` is what the
`openai` SDK parses into `APIStatusError.body`; clients branch on `type`/`code`, so both are
stable strings. Messages never carry provider secrets: provider error bodies are re-rendered
through `UpstreamError` with only status and a scrubbed message.

Status choices:
- `BudgetExceeded` is 429 with code `budget_exceeded` (type `insufficient_quota`), as OpenAI
  answers an exhausted quota; unlike `RateLimited` it sends no Retry-After that would make SDKs
  retry in a loop until the day or month rolls over.
- `Unavailable` is 503 (every target of the chain failed or is open in the breaker).
- `UpstreamError` is 502 (an upstream answered with an error that is not worth a fallback, e.g.
  its own 400, and we pass the status class on).
"""
from __future__ import annotations

import json
from typing import Any


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def body(self) -> bytes:
        return json.dumps(self.to_dict()).encode()

    def sse_event(self) -> bytes:
        """The error as an SSE frame for a stream that already sent its 200 headers.

        OpenAI ends a failed stream with a `data: {"error": ...}` frame; the `openai` SDK raises
        `APIError` when it sees an `error` key in a chunk, so the client never mistakes a broken
        stream for a finished one. An `event: error` line is added for EventSource clients.
        """
        return b"event: error\ndata: " + self.body() + b"\n\n"


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str = "rate limit exceeded", *, retry_after_s: float = 1.0,
                 headers: dict[str, str] | None = None, **kw: Any):
        hdrs = dict(headers or {})
        # Retry-After is whole seconds (RFC 9110); round up so a client never retries early.
        hdrs.setdefault("retry-after", str(max(1, int(-(-retry_after_s // 1)))))
        super().__init__(message, headers=hdrs, **kw)
        self.retry_after_s = retry_after_s


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class Unavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "upstream_unavailable"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


def render(exc: GatewayError) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for an HTTP response."""
    headers = {"content-type": "application/json", **exc.headers}
    return exc.status, headers, exc.body()
