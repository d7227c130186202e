"""The `x-thawline-*` HTTP headers: every name, and the one place an answer's headers are assembled.

Each answer of an inference endpoint (JSON, SSE or error) carries:

- `x-thawline-target`: the target that answered (on an error: the last one tried),
  `<route>/<index>:<provider>/<model>`; absent when no target was tried;
- `x-thawline-attempts`: attempts made (a target skipped as cold, open or unable is no attempt);
- `x-thawline-fallbacks`: `<target>=<reason>,...`, only when the chain moved past a target;
- `x-thawline-replica`: the Serve replica that answered, on every answer of a deployed gateway
  (set by serve_apps/gateway.py; admin and error answers too).

`x-thawline-max-wait-s` is a REQUEST header of the LLM app's HTTP route (serve_apps/llm/router.py):
it lowers the cold-start wait for one request.

Every writer (gateway/inference.py, gateway/asgi.py, gateway/dispatch.py, gateway/app.py) and the
client (gateway/client/types.py) import the names from here; tests/unit/test_layout.py fails on a
literal of one anywhere else in product code. Hot path: `answer_headers` builds an answer's whole
header list once, names pre-encoded.
"""
from __future__ import annotations

from typing import Any, Mapping

PREFIX = "x-thawline-"
TARGET = "x-thawline-target"
ATTEMPTS = "x-thawline-attempts"
FALLBACKS = "x-thawline-fallbacks"
REPLICA = "x-thawline-replica"
MAX_WAIT_S = "x-thawline-max-wait-s"        # request header of the LLM app, not an answer's

_TARGET, _ATTEMPTS, _FALLBACKS = TARGET.encode(), ATTEMPTS.encode(), FALLBACKS.encode()
_COUNTS = tuple(str(i).encode() for i in range(32))     # attempts are few: no str() per answer

Header = tuple[bytes, bytes]


def replica_header(replica_id: str) -> Header:
    """The `x-thawline-replica` header of one replica (built once, at replica start)."""
    return REPLICA.encode(), replica_id.encode("latin-1")


def outcome_headers(target: Any, attempts: int, failures: list[str] | None) -> list[Header]:
    """Target (a gateway.routes.Target, or None before any attempt), attempts and fallbacks of one
    request's outcome."""
    out = [(_ATTEMPTS, _COUNTS[attempts] if attempts < 32 else str(attempts).encode())]
    if target is not None:
        out.append((_TARGET, target.id.encode()))
    if failures:
        out.append((_FALLBACKS, ",".join(failures).encode()))
    return out


def answer_headers(head: list[Header], rate: Mapping[str, str] | None, target: Any, attempts: int,
                   failures: list[str] | None, replica: Header | None) -> list[Header]:
    """All headers of one answer, in one list built once: `head` (content type and length; extended
    in place), the limiter's `x-ratelimit-*` (`rate`), the outcome, and the replica's id."""
    head.extend(outcome_headers(target, attempts, failures))
    return early_headers(head, rate, replica)


def early_headers(head: list[Header], rate: Mapping[str, str] | None, replica: Header | None) -> list[Header]:
    """The headers known before any target answered (a stream kept alive while cold): `head`,
    the limiter's `x-ratelimit-*` and the replica's id; extended in place."""
    if rate:
        head.extend([(k.encode(), v.encode()) for k, v in rate.items()])
    if replica is not None:
        head.append(replica)
    return head


def error_headers(target: Any, attempts: int, failures: list[str] | None) -> dict[str, str]:
    """The outcome headers as a GatewayError carries them (an answer that failed)."""
    return {k.decode(): v.decode() for k, v in outcome_headers(target, attempts, failures)}


def thawline_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Client side: the `x-thawline-*` headers of an answer, prefix stripped (`target`, ...)."""
    n = len(PREFIX)
    return {k[n:]: v for k, v in headers.items() if k.startswith(PREFIX)}


def outcome_comment(target: Any, attempts: int, failures: list[str] | None) -> bytes:
    """The outcome headers as SSE comment lines (`: name: value`), for a stream whose headers went
    out before its target was known (kept alive while cold). SSE clients ignore comments; this
    gateway's own client reads them back into the answer's headers (`header_from_comment`)."""
    return b"".join(b": " + k + b": " + v + b"\n" for k, v in outcome_headers(target, attempts, failures)) + b"\n"


def header_from_comment(line: str) -> tuple[str, str] | None:
    """(name, value) of one `: x-thawline-...: value` SSE comment line, else None."""
    body = line[1:].strip()
    if not body.startswith(PREFIX):
        return None
    name, sep, value = body.partition(": ")
    return (name, value) if sep else None
