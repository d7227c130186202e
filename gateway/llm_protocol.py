"""The contract between a local LLM app (serve_apps/llm/router.py) and the gateway's ServeProvider.

Both sides import this module (serve_apps may import gateway, never the other way), so the
request shape, the error body, the error type and the status mapping have one owner.

Handle request:  HandleRequest; on the wire (a plain dict, what `to_wire` builds and `from_wire`
                 reads): {"endpoint": "chat" | "completions", "body": <OpenAI body>,
                 "max_wait_s": float?, "adapter": str?}. adapter names a LoRA adapter of the app's
                 model in its store (the gateway's "<route>:<adapter>"); absent: the base model. max_wait_s bounds the wait for a replica when the app is
                 at zero (the caller's cold-path budget); the app never waits longer than its
                 cold_start_max_wait_s. New fields are added to HandleRequest, nowhere else.
Handle answers:  generate -> OpenAI response dict; generate_stream -> OpenAI chunk dicts, the
                 last one carrying `usage`. A finished generator is the terminal marker. Inside
                 the app the engine answers an error as an error body instead (`error_body`);
                 `app_error_in` is the one check for it.
Errors:          LLMAppError(status, body), body in OpenAI's error shape. It crosses Ray's
                 process boundary pickled, so it rebuilds itself from (status, body) (see
                 __reduce__); Ray hands it to the caller wrapped (RayTaskError dual class, with
                 the original as `.cause`): use `as_app_error` to get it back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.providers.base import CHAT, COMPLETIONS

COLD_START_TIMEOUT = "cold_start_timeout"
ENDPOINTS = (CHAT, COMPLETIONS)  # the gateway's own endpoint names, passed through as they are


def error_body(message: str, status: int = 400, type_: str = "invalid_request_error",
               code: Any = None, param: str | None = None) -> dict:
    """OpenAI's error shape. `code` defaults to the HTTP status (what vLLM's ErrorResponse does)."""
    return {"error": {"message": message, "type": type_, "param": param,
                      "code": status if code is None else code}}


def status_of(body: dict) -> int:
    """The HTTP status an error body stands for: vLLM puts it in `code`; anything else is a 400
    only when it looks like the client's mistake, else a 500."""
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    if isinstance(code, int) and 400 <= code < 600:
        return code
    if isinstance(err, dict) and err.get("type") in ("invalid_request_error", "BadRequestError"):
        return 400
    return 500


def app_error_in(answer: Any) -> "LLMAppError | None":
    """The LLMAppError an engine answer (a response or a chunk) stands for, or None when it is
    no error body."""
    if isinstance(answer, dict) and "error" in answer:
        return LLMAppError(status_of(answer), answer)
    return None


def max_wait_from(value: Any) -> float | None:
    """A caller's max_wait_s as sent (a number, or the header's string): None when absent or
    unreadable (the app then waits its own bound), never below 0."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class HandleRequest:
    """One call of the LLM app's handle (generate / generate_stream): the one builder and reader."""

    endpoint: str
    body: dict = field(default_factory=dict)
    max_wait_s: float | None = None  # the caller's cold-path budget; None: the app's own bound
    adapter: str | None = None  # a LoRA adapter of the app's model (snapshots/adapters); None: the base

    def to_wire(self) -> dict:
        wire: dict[str, Any] = {"endpoint": self.endpoint, "body": self.body}
        if self.max_wait_s is not None:
            wire["max_wait_s"] = self.max_wait_s
        if self.adapter is not None:
            wire["adapter"] = self.adapter
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> "HandleRequest":
        """Raises LLMAppError(400) for a request that is no handle request."""
        if not isinstance(wire, dict):
            raise LLMAppError(400, error_body(f"a handle request is a dict, got {type(wire).__name__}"))
        endpoint, body = wire.get("endpoint"), wire.get("body")
        if endpoint not in ENDPOINTS:
            raise LLMAppError(400, error_body(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}"))
        if body is not None and not isinstance(body, dict):
            raise LLMAppError(400, error_body("request body must be a JSON object"))
        adapter = wire.get("adapter")
        if adapter is not None and (not isinstance(adapter, str) or not adapter):
            raise LLMAppError(400, error_body(f"adapter must be a non-empty string, got {adapter!r}"))
        return cls(endpoint, dict(body or {}), max_wait_from(wire.get("max_wait_s")), adapter)


class LLMAppError(Exception):
    """A request the LLM app answers with an error; `body` is OpenAI's error shape."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(status, body)
        self.status, self.body = int(status), body

    def __reduce__(self):
        # Rebuilt from (status, body) after pickling; the default reduce would call
        # cls(*self.args), which only works while args mirror __init__'s signature.
        return (type(self), (self.status, self.body))

    def __str__(self) -> str:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        msg = err.get("message") if isinstance(err, dict) else self.body
        return f"{self.status}: {msg}"


ADAPTER_SEPARATOR = ":"  # a client addresses an adapter as "<route>:<adapter>"


def adapter_model(route: str, adapter: str | None) -> str:
    """The `model` a client sends for `adapter` of `route` (the base itself when adapter is None)."""
    return route if adapter is None else f"{route}{ADAPTER_SEPARATOR}{adapter}"


def split_adapter_model(model: str) -> tuple[str, str | None]:
    """'<route>:<adapter>' -> (route, adapter); a plain route -> (route, None)."""
    route, sep, adapter = model.partition(ADAPTER_SEPARATOR)
    return (route, adapter) if sep and adapter else (model, None)


def model_not_found(model: str) -> LLMAppError:
    """404 for a model (or "<route>:<adapter>") the caller may not use or that does not exist: one
    body for both, so a key outside an adapter's scope cannot tell that the adapter exists."""
    return LLMAppError(404, error_body(f"The model `{model}` does not exist or you do not have access to it.",
                                       404, "invalid_request_error", "model_not_found", param="model"))


class ColdStartTimeout(LLMAppError):
    """503: the app was at zero replicas and none became ready within the wait budget."""


def cold_start_timeout(model: str, waited_s: float) -> ColdStartTimeout:
    return ColdStartTimeout(503, error_body(
        f"model {model!r} is scaled to zero and no replica became ready within {waited_s:g}s "
        "(cold-start wait budget); it keeps warming, retry later",
        503, "service_unavailable", COLD_START_TIMEOUT))


def as_app_error(e: BaseException) -> LLMAppError | None:
    """The LLMAppError inside whatever Ray or Serve wrapped it in, or None."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, LLMAppError):
            # a RayTaskError dual instance has no status/body of its own: take the cause's
            cause = getattr(e, "cause", None)
            return cause if isinstance(cause, LLMAppError) else e
        e = getattr(e, "cause", None) or e.__cause__
        seen += 1
    return None
