"""OpenAI-style `x-ratelimit-*` headers (pure)."""
from __future__ import annotations

import math


def fmt_duration(seconds: float) -> str:
    """OpenAI writes resets like Go durations: "1s", "6m0s", "20ms"."""
    if seconds < 1:
        return f"{max(int(math.ceil(seconds * 1000)), 0)}ms"
    s = int(math.ceil(seconds))
    m, s = divmod(s, 60)
    return f"{m}m{s}s" if m else f"{s}s"


def ratelimit_headers(requests: tuple[int, int, float] | None,
                      tokens: tuple[int, int, float] | None) -> dict[str, str]:
    """(limit, remaining, reset_s) of the tightest requests / tokens limit; None omits the set."""
    out: dict[str, str] = {}
    for name, v in (("requests", requests), ("tokens", tokens)):
        if v is None:
            continue
        limit, remaining, reset_s = v
        out[f"x-ratelimit-limit-{name}"] = str(limit)
        out[f"x-ratelimit-remaining-{name}"] = str(max(remaining, 0))
        out[f"x-ratelimit-reset-{name}"] = fmt_duration(reset_s)
    return out
