"""Thawline's errors: one family for the gateway that raises them and the client that receives them.

Server side, each renders to OpenAI's error JSON shape
`{"error": {"message": str, "type": str, "param": str|None, "code": str|None}}`, which is what the
`openai` SDK parses into `APIStatusError.body`; clients branch on `type`/`code`, so both are
stable strings. Messages never carry provider secrets: provider error bodies are re-rendered
through `UpstreamError` with only status and a scrubbed message.

Client side (`gateway.client` re-exports these classes), `error_from_response` maps a gateway
answer, over HTTP and over a DeploymentHandle alike, back to the same classes, and
`error_from_stream_event` a failure inside a stream that already started. Callers branch on the
class, never on status codes. An error built from an answer carries the answer's status, code,
type, param, headers and body exactly as received (None where the answer had none), not the
class defaults.

Status choices:
- `BudgetExceeded` is 429 with code `budget_exceeded` (type `insufficient_quota`), as OpenAI
  answers an exhausted quota; unlike `RateLimited` it sends no Retry-After that would make SDKs
  retry in a loop until the day or month rolls over.
- `Unavailable` is 503 (every target of the chain failed or is open in the breaker).
- `UpstreamError` is 502 (an upstream answered with an error that is not worth a fallback, e.g.
  its own 400, and we pass the status class on).

Every class pickles (Ray ships them between processes): each takes its message as the one
positional argument and everything else as keywords with defaults, so the default
`BaseException.__reduce__` (the class called with the message, then the attributes restored)
rebuilds it exactly.
"""
from __future__ import annotations

import json
from typing import Any, Mapping


class GatewayError(Exception):
    """Base of every Thawline error; the client knows it as `ThawlineError`."""

    status: int | None = 500
    type: str | None = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 code: str | None = None, param: str | None = None,
                 headers: Mapping[str, str] | None = None, body: Any = None):
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
        self.body = body              # client side: the answer's body as received (JSON, text or None)
        self.received = False         # True when built from an answer (client side)

    @classmethod
    def received_from(cls, message: str, *, status: int | None = None, code: str | None = None,
                      type: str | None = None, param: str | None = None,
                      headers: Mapping[str, str] | None = None, body: Any = None, **kw: Any):
        """The error as a client got it: attributes exactly as the answer carried them (None
        where it had none, never the class defaults), header names lower-cased."""
        err = cls(message, **kw)
        err.status, err.code, err.type, err.param, err.body = status, code, type, param, body
        err.headers = {k.lower(): v for k, v in (headers or {}).items()}
        err.received = True
        return err

    def __str__(self) -> str:
        if not self.received:
            return self.message
        prefix = f"{self.status} " if self.status else ""
        code = f" ({self.code})" if self.code else ""
        return f"{prefix}{self.message}{code}"

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()

    def sse_event(self) -> bytes:
        """The error as an SSE frame for a stream that already sent its 200 headers.

        OpenAI ends a failed stream with a `data: {"error": ...}` frame; the `openai` SDK raises
        `APIError` when it sees an `error` key in a chunk, so the client never mistakes a broken
        stream for a finished one. An `event: error` line is added for EventSource clients.
        """
        return b"event: error\ndata: " + self.to_json() + b"\n\n"


ThawlineError = GatewayError


class BadRequest(GatewayError):
    """The request itself is wrong (unknown model, bad parameters, body too large)."""
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthError(GatewayError):
    """Missing or unknown API key, or a key not allowed to use this route."""
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
    """A per-route or per-key limit refused the request; `retry_after` is in seconds."""
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str = "rate limit exceeded", *, retry_after_s: float | None = 1.0,
                 headers: Mapping[str, str] | None = None, **kw: Any):
        hdrs = dict(headers or {})
        if retry_after_s is not None:
            # Retry-After is whole seconds (RFC 9110); round up so a client never retries early.
            hdrs.setdefault("retry-after", str(max(1, int(-(-retry_after_s // 1)))))
        super().__init__(message, headers=hdrs, **kw)
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before retrying (client side: None when the answer named none)."""
        return self.retry_after_s


class BudgetExceeded(GatewayError):
    """The route's or key's spend budget is used up; retrying soon will not help."""
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class Unavailable(GatewayError):
    """Every target of the route failed or is open in the circuit breaker, or the gateway is down."""
    status = 503
    type = "server_error"
    code = "upstream_unavailable"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class StreamError(Unavailable):
    """A stream broke after it started: it ended with an error event, or without `[DONE]`."""


def render(exc: GatewayError) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for an HTTP response."""
    headers = {"content-type": "application/json", **exc.headers}
    return exc.status, headers, exc.to_json()


# ------------------------------------------------------------------ client side: answer -> error

def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    if raw is None:
        # OpenAI-style reset header, e.g. "1.5s" or "20ms"; used when Retry-After is missing.
        raw = headers.get("x-ratelimit-reset-requests") or headers.get("x-ratelimit-reset-tokens")
        if raw is None:
            return None
        raw = raw.strip()
        try:
            if raw.endswith("ms"):
                return float(raw[:-2]) / 1000.0
            if raw.endswith("s"):
                return float(raw[:-1])
        except ValueError:
            return None
    try:
        return float(raw)
    except ValueError:
        return None  # an HTTP-date; the gateway never sends one


def error_from_response(status: int, headers: Mapping[str, str] | None, body: Any) -> GatewayError:
    """Map a gateway error answer to its typed exception.

    `body` is the parsed JSON (OpenAI shape `{"error": {...}}`) or anything else a broken
    upstream or proxy may send (text, None); the message then falls back to the status.
    401/403 -> AuthError; 429 + budget_exceeded -> BudgetExceeded; 429 otherwise -> RateLimited;
    5xx and 408 -> Unavailable; other 4xx -> BadRequest.
    """
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or f"HTTP {status}")
        code, etype, param = err.get("code"), err.get("type"), err.get("param")
    else:
        message = (body.strip()[:200] if isinstance(body, str) and body.strip() else f"HTTP {status}")
        code = etype = param = None
    kw = dict(status=status, code=code, type=etype, param=param, headers=hdrs, body=body)
    if status in (401, 403):
        return AuthError.received_from(message, **kw)
    if status == 429 or code in ("budget_exceeded", "rate_limit_exceeded"):
        if code == "budget_exceeded" or etype == "insufficient_quota":
            return BudgetExceeded.received_from(message, **kw)
        return RateLimited.received_from(message, retry_after_s=_retry_after(hdrs), **kw)
    if status >= 500 or status == 408:
        return Unavailable.received_from(message, **kw)
    if 400 <= status < 500:
        return BadRequest.received_from(message, **kw)
    return GatewayError.received_from(message, **kw)


def error_from_stream_event(event: Any) -> StreamError:
    """An `{"error": {...}}` payload inside a stream that already started."""
    err = event.get("error") if isinstance(event, dict) else None
    if not isinstance(err, dict):
        return StreamError.received_from("stream ended with an unreadable error event", body=event)
    return StreamError.received_from(str(err.get("message") or "stream failed"), code=err.get("code"),
                                     type=err.get("type"), param=err.get("param"), body=event)
