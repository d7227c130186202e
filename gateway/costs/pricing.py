"""Prices and pricing: the price book (the shipped table gateway/data/prices.json + overrides from
gateway.yaml) and the pricing math on it (pure)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from gateway.costs.schema import ModelPrice

# ------------------------------------------------------------------------------ the price book

# Dated / versioned model ids resolve to their family's price: "gpt-4o-2024-08-06" -> "gpt-4o",
# "claude-sonnet-4-20250514" -> "claude-sonnet-4". The prefix must end at one of these.
_BOUNDARY = "-@:."


@dataclass(frozen=True, slots=True)
class PriceTable:
    models: dict[str, ModelPrice]
    source: str
    as_of: str


def load_price_table() -> PriceTable:
    raw = json.loads(resources.files("gateway").joinpath("data/prices.json").read_text())
    return PriceTable(models={m: ModelPrice(**p) for m, p in raw["models"].items()},
                      source=raw["source"], as_of=raw["as_of"])


def _match(models: dict[str, ModelPrice], model: str) -> ModelPrice | None:
    m = model.removeprefix("models/")        # Gemini model names come as "models/<id>"
    if m in models:
        return models[m]
    best = None
    for name in models:
        if m.startswith(name) and m[len(name)] in _BOUNDARY and (best is None or len(name) > len(best)):
            best = name
    return models[best] if best else None


class PriceBook:
    """Resolves (provider, model) to a price: provider override > global override > table."""

    def __init__(self, table: PriceTable | None = None, *, global_overrides: dict[str, ModelPrice] | None = None,
                 provider_overrides: dict[str, dict[str, ModelPrice]] | None = None):
        self.table = table or load_price_table()
        self.global_overrides = global_overrides or {}
        self.provider_overrides = provider_overrides or {}
        self._cache: dict[tuple[str, str], tuple[ModelPrice | None, str]] = {}

    def lookup(self, provider: str, model: str) -> tuple[ModelPrice | None, str]:
        """(price, how): how is "config", "table" or "unpriced" (recorded in the ledger)."""
        key = (provider, model)
        hit = self._cache.get(key)
        if hit is None:
            p = _match(self.provider_overrides.get(provider, {}), model) or _match(self.global_overrides, model)
            hit = (p, "config") if p else None
            if hit is None:
                p = _match(self.table.models, model)
                hit = (p, "table") if p else (None, "unpriced")
            self._cache[key] = hit
        return hit


# ------------------------------------------------------------------------------- pricing math

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


def worst_case_usd(prices: "list[ModelPrice | None]", *, prompt_tokens: int, max_output_tokens: int) -> float:
    """The most one request may cost: its prompt plus every output token it may produce, at the
    dearest of the targets it may land on (a chain's max). Unpriced and local targets count 0
    (local spend is known only afterwards, from replica time). What budgets reserve at admission."""
    worst = 0.0
    for p in prices:
        if p is not None:
            worst = max(worst, cost_usd(p, tokens_in=max(prompt_tokens, 0), tokens_out=max(max_output_tokens, 0)))
    return worst


def answered(row: dict) -> bool:
    """Whether a ledger row stands for output the client got: some output tokens, or an answer
    that finished (an empty completion is still an answer). A failed attempt that produced
    nothing (all targets failed, timeouts, 5xx to the client) is not billed to anyone."""
    return row["tokens_out"] > 0 or (row["status"] == "ok" and row["tokens_in"] > 0)


def allocate_local(total_usd: float, rows: list[dict]) -> tuple[list[float], float]:
    """Split one period's replica cost of a local app: (cost per row, unbilled USD).

    Only answered rows pay, by tokens; rows without an answer get 0. Replica time no answer
    paid for (an idle period, or one whose requests all failed) is returned as unbilled: it
    goes on its own ledger line (status "idle"), never into a key's or route's spend."""
    paying = [i for i, r in enumerate(rows) if answered(r)]
    out = [0.0] * len(rows)
    if not paying:
        return out, max(total_usd, 0.0)
    for i, c in zip(paying, share_by_tokens(total_usd, [rows[i]["tokens_in"] + rows[i]["tokens_out"]
                                                        for i in paying])):
        out[i] = c
    return out, 0.0
