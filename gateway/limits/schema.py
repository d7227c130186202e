"""Limit schemas a person writes in gateway.yaml (routes.<alias>.limits, keys[].limits)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LimitSpec(BaseModel):
    """Per-route or per-key limits, enforced exactly across all gateway replicas.

    `rpm` and `tpm` count per fixed, minute-aligned window (the window every replica and the
    broker agree on); `max_concurrent` counts requests in flight at any moment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, ge=1, description="Requests per minute (fixed 60 s windows aligned to the minute).")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute. Each request pre-charges its estimated "
                            "prompt tokens plus max_tokens, then settles against the usage actually reported.")
    max_concurrent: int | None = Field(None, ge=1, description="Requests in flight at once (streams count until "
                                       "their last chunk).")

    def is_empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_concurrent is None


class LimiterTuning(BaseModel):
    """Knobs of the lease protocol (defaults suit most deployments; see gateway/limits/broker.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_wait_s: float = Field(0.25, ge=0, description="How long an admission may wait for other replicas to "
                              "hand back unused quota before it is rejected with 429.")
    idle_return_s: float = Field(1.0, gt=0, description="A replica hands back quota it has not used for this long, "
                                 "so a lone client elsewhere can still use the whole limit.")
    lease_horizon_s: float = Field(0.5, gt=0, description="A replica leases about this many seconds of its recent "
                                   "demand at once; larger means fewer broker calls, more quota parked per replica.")
    holder_ttl_s: float = Field(10.0, gt=0, description="A replica not heard from for this long is presumed dead and "
                                "its leases (concurrency slots included) go back to the pool.")
