"""The price book: shipped table (gateway/data/prices.json) + overrides from gateway.yaml."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from gateway.costs.schema import ModelPrice

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
