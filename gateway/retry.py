"""Backoff and Retry-After: pure functions (the RNG is injectable for tests)."""
from __future__ import annotations

import random
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone

from gateway.config import RetryConfig


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 10.2.3).
    Also reads OpenAI's `retry-after-ms`-style float seconds. None if absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def backoff_s(retry_index: int, cfg: RetryConfig, rng: random.Random | None = None) -> float:
    """Full jitter (AWS architecture blog): uniform(0, min(cap, base * 2**i)). Jitter spreads
    the retries of many clients that failed together, so they do not hit the upstream in lockstep."""
    r = rng or random
    ceiling = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** retry_index))
    return r.uniform(0.0, ceiling)


def retry_delay(retry_index: int, retry_after_s: float | None, cfg: RetryConfig,
                rng: random.Random | None = None) -> float | None:
    """Delay before retrying the SAME target, or None when the target asked us to wait longer than
    we are willing to (then the request moves down the chain instead of sleeping)."""
    if retry_after_s is not None:
        if retry_after_s > cfg.backoff_max_s:
            return None
        # honour the server's minimum; add a little jitter above it
        return retry_after_s + backoff_s(0, cfg, rng) * 0.1
    return backoff_s(retry_index, cfg, rng)
