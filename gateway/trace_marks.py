"""Attempt marks: what the dispatcher notes about each attempt while a request is traced.

Pure and dependency-free (the dispatcher imports it; OpenTelemetry is only imported by
gateway/tracing.py, and only when tracing is configured). Marks are taken only when the request's
`Trace.timeline` is a list, i.e. tracing is on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class AttemptMark:
    target_id: str
    provider: str
    model: str
    start_ns: int
    cold: bool                  # a local target that was not warm when the attempt began
    app: str | None             # the Serve app of a local (serve) target
    rec_index: int              # index its AttemptRecord gets in Trace.records (streams)
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
    trace.timeline.append(m)
    return m
