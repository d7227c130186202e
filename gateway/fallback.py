"""Fallback policy as pure functions: what a failure means and what to do next.

No I/O and no clock here: the dispatcher (gateway/dispatch.py) observes a failure, asks
`FallbackPlan.decide`, and acts (sleep, retry the same target, move down the chain, or give up).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from gateway.config import RetryConfig
from gateway.retry import retry_delay


class Kind(str, Enum):
    CONNECT = "connect_error"
    TIMEOUT = "timeout"
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"
    STATUS = "status"                 # upstream answered with an HTTP error status
    STREAM_BROKEN = "stream_broken"   # a stream ended without its terminal marker
    COLD = "cold"                     # local target has no warm replica and the route spills over
    BREAKER_OPEN = "breaker_open"
    UNSUPPORTED = "unsupported"       # this provider cannot serve this endpoint (e.g. embeddings)


# OpenAI and most hosted APIs use these for "try again / try elsewhere"; any other 4xx is the
# request's own fault and would fail the same way on every target.
RETRYABLE_STATUS = frozenset({408, 409, 429})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


@dataclass(slots=True)
class Failure:
    kind: Kind
    message: str = ""
    status: int | None = None
    retry_after_s: float | None = None
    param: str | None = None          # UNSUPPORTED: the request field this target cannot honour
    code: str | None = None           # STATUS: the error code the upstream answered, where it is one
                                      # the gateway passes on (a local app's `model_not_found`)

    @property
    def triggers_fallback(self) -> bool:
        if self.kind is Kind.STATUS:
            return self.status is not None and is_retryable_status(self.status)
        return True

    @property
    def counts_against_breaker(self) -> bool:
        """Health signals only. 429 is the upstream's quota (Retry-After handles it), not ill
        health; a cold replica or an open breaker is not a new observation of the target."""
        if self.kind in (Kind.COLD, Kind.BREAKER_OPEN, Kind.UNSUPPORTED):
            return False
        if self.kind is Kind.STATUS:
            return self.status is not None and (self.status >= 500 or self.status == 408)
        return True

    @property
    def is_attempt(self) -> bool:
        """Whether a request was actually sent (skips do not spend the retry budget)."""
        return self.kind not in (Kind.COLD, Kind.BREAKER_OPEN, Kind.UNSUPPORTED)

    @property
    def reason(self) -> str:
        if self.kind is Kind.STATUS:
            return f"{self.status}"
        if self.kind is Kind.UNSUPPORTED and self.param:
            return f"unsupported:{self.param}"
        return self.kind.value


@dataclass(frozen=True, slots=True)
class Decision:
    action: str            # "retry" (same target) | "next" (down the chain) | "fail" (to client)
    delay_s: float = 0.0


RETRY, NEXT, FAIL = "retry", "next", "fail"


class FallbackPlan:
    """Per-request state: the retry budget spent so far.

    `budget` caps the extra attempts (same-target retries plus moves to a new target after a
    real attempt) so one request cannot multiply load during an outage.
    """

    __slots__ = ("cfg", "rng", "extra_used")

    def __init__(self, cfg: RetryConfig, rng: random.Random | None = None):
        self.cfg, self.rng, self.extra_used = cfg, rng, 0

    def decide(self, failure: Failure, *, retries_done: int, max_retries: int,
               has_next: bool, output_started: bool = False) -> Decision:
        if not failure.triggers_fallback:
            return Decision(FAIL)
        if not failure.is_attempt:
            return Decision(NEXT) if has_next else Decision(FAIL)
        if self.extra_used >= self.cfg.budget:
            return Decision(FAIL)
        # a stream that already sent tokens is never retried on the same target (it would
        # repeat output); it may only continue elsewhere with the partial output as context
        if not output_started and retries_done < max_retries:
            delay = retry_delay(retries_done, failure.retry_after_s, self.cfg, self.rng)
            if delay is not None:
                self.extra_used += 1
                return Decision(RETRY, delay)
        if has_next:
            self.extra_used += 1
            return Decision(NEXT)
        return Decision(FAIL)
