"""Pricing math (pure)."""
from __future__ import annotations

from gateway.costs.schema import ModelPrice


def cost_usd(price: ModelPrice, *, tokens_in: int, tokens_out: int, tokens_cached: int = 0) -> float:
    """tokens_in includes the cached ones (OpenAI's prompt_tokens); those are billed at the cached
    rate, the rest at the input rate."""
    cached = min(max(tokens_cached, 0), max(tokens_in, 0))
    cached_rate = price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m
    return ((tokens_in - cached) * price.input_per_1m + cached * cached_rate
            + tokens_out * price.output_per_1m) / 1e6


def share_by_tokens(total_usd: float, tokens: list[int]) -> list[float]:
    """Split a local model's accelerator cost for a period across its requests by tokens
    (input + output): a request that kept the replica busy longer pays more. The shares sum to
    the total exactly (the last one takes the rounding remainder)."""
    n = sum(tokens)
    if not tokens:
        return []
    if n <= 0:
        each = total_usd / len(tokens)
        return [each] * len(tokens)
    out = [total_usd * t / n for t in tokens]
    out[-1] = total_usd - sum(out[:-1])
    return out


def accelerator_cost_usd(replica_seconds: float, usd_per_hour: float) -> float:
    return max(replica_seconds, 0.0) * usd_per_hour / 3600.0
