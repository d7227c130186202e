"""Typed exceptions of the client handle, and the pure mapping from a gateway response to them.

The gateway answers every failure in OpenAI's error shape (`gateway/errors.py`), over HTTP and
over a DeploymentHandle alike, so one function maps (status, headers, body) to an exception for
both transports. Callers branch on the exception class, never on status codes.
"""
from __future__ import annotations

from typing import Any, Mapping


class ThawlineError(Exception):
    """Base of every error the client raises for a gateway answer."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 type: str | None = None, headers: Mapping[str, str] | None = None,
                 body: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = body

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status else ""
        code = f" ({self.code})" if self.code else ""
        return f"{prefix}{self.message}{code}"


class BadRequest(ThawlineError):
    """The request itself is wrong (unknown model, bad parameters, body too large)."""


class AuthError(ThawlineError):
    """Missing or unknown API key, or a key not allowed to use this route."""


class RateLimited(ThawlineError):
    """A per-route or per-key limit refused the request; `retry_after` is in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class BudgetExceeded(ThawlineError):
    """The route's or key's spend budget is used up; retrying soon will not help."""


class Unavailable(ThawlineError):
    """Every target of the route failed or is open in the circuit breaker, or the gateway is down."""


class StreamError(Unavailable):
    """A stream broke after it started; the gateway ended it with an error event."""


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


def error_from_response(status: int, headers: Mapping[str, str] | None, body: Any) -> ThawlineError:
    """Map a gateway error answer to the client's typed exception.

    `body` is the parsed JSON (OpenAI shape `{"error": {...}}`) or anything else a broken
    upstream or proxy may send (text, None); the message then falls back to the status.
    """
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or f"HTTP {status}")
        code = err.get("code")
        etype = err.get("type")
    else:
        message = (body.strip()[:200] if isinstance(body, str) and body.strip() else f"HTTP {status}")
        code = etype = None
    kw = dict(status=status, code=code, type=etype, headers=hdrs, body=body)
    if status in (401, 403):
        return AuthError(message, **kw)
    if status == 429 or code in ("budget_exceeded", "rate_limit_exceeded"):
        if code == "budget_exceeded" or etype == "insufficient_quota":
            return BudgetExceeded(message, **kw)
        return RateLimited(message, retry_after=_retry_after(hdrs), **kw)
    if status >= 500 or status == 408:
        return Unavailable(message, **kw)
    if 400 <= status < 500:
        return BadRequest(message, **kw)
    return ThawlineError(message, **kw)


def error_from_stream_event(event: Any) -> ThawlineError:
    """An `{"error": {...}}` frame inside a stream that already started."""
    err = event.get("error") if isinstance(event, dict) else None
    if not isinstance(err, dict):
        return StreamError("stream ended with an unreadable error event", body=event)
    return StreamError(str(err.get("message") or "stream failed"), code=err.get("code"),
                       type=err.get("type"), body=event)
