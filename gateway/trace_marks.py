"""Attempt marks: what the dispatcher notes about each attempt while a request is traced.

Pure and dependency-free (the dispatcher imports it; OpenTelemetry is only imported by
gateway/tracing.py, and only when tracing is configured). Marks are taken only when the request's
`Trace.timeline` is a list, i.e. tracing is on.

Trace context continues upstream: the request's trace id is chosen when it starts (a `Timeline`)
and each attempt's span id when the attempt begins, so `TRACEPARENT` (W3C trace context) can be
sent with the upstream call before the spans themselves are built after the fact.
"""
from __future__ import annotations

import random
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

# The current attempt's W3C `traceparent` (hosted providers send it upstream); None: tracing off.
# Set in the request's own task right before the attempt, so the provider call sees it.
TRACEPARENT: ContextVar[str | None] = ContextVar("thawline_traceparent", default=None)


class Timeline(list):
    """A traced request's attempt marks, plus the trace id its spans will carry."""

    __slots__ = ("trace_id",)

    def __init__(self) -> None:
        super().__init__()
        self.trace_id = random.getrandbits(128) or 1


@dataclass(slots=True)
class AttemptMark:
    target_id: str
    provider: str
    model: str
    start_ns: int
    cold: bool                  # a local target that was not warm when the attempt began
    app: str | None             # the Serve app of a local (serve) target
    rec_index: int              # index its AttemptRecord gets in Trace.records (streams)
    span_id: int = 0            # the attempt span's id, chosen up front (sent upstream in traceparent)
    end_ns: int = 0
    outcome: str = "ok"         # "ok" | a Failure.reason ("500", "timeout", ...) | "refused"
    http_status: int | None = None

    def finish(self, trace: Any, f: Any) -> None:
        self.end_ns = time.time_ns()
        if isinstance(f, str):
            self.outcome = f
        elif f is not None:
            self.outcome = f.reason
            self.http_status = getattr(f, "status", None)


def attempt_mark(trace: Any, target: Any, provider: Any) -> AttemptMark:
    local = getattr(target.provider, "type", None) == "serve"
    m = AttemptMark(target.id, target.provider_name, target.model, time.time_ns(),
                    cold=bool(local and provider.is_cold()), app=getattr(target.provider, "app", None) if local else None,
                    rec_index=len(trace.records))
    trace_id = getattr(trace.timeline, "trace_id", 0)
    if trace_id:
        m.span_id = random.getrandbits(64) or 1
        TRACEPARENT.set(f"00-{trace_id:032x}-{m.span_id:016x}-01")
    trace.timeline.append(m)
    return m
