"""Cost schemas a person writes in gateway.yaml (prices, budgets) and the ledger row."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelPrice(BaseModel):
    """USD per 1M tokens. `input_per_1m` applies to uncached prompt tokens only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1m: float = Field(ge=0, description="USD per 1M uncached prompt (input) tokens.")
    output_per_1m: float = Field(ge=0, description="USD per 1M completion (output) tokens.")
    cached_input_per_1m: float | None = Field(None, ge=0, description="USD per 1M prompt tokens served from the "
                                              "provider's prompt cache; None bills them at input_per_1m.")


class BudgetSpec(BaseModel):
    """Spend caps in USD. Once reached, further requests get 429 `budget_exceeded` until the
    UTC day / month rolls over. Each request reserves its worst-case cost (prompt + max_tokens x n
    at its route's dearest priced target) at admission, exactly across gateway replicas, and
    settles to its real cost after the answer: a burst crosses a budget by at most one request's
    worst case. Local (serve) targets are priced afterwards from replica time and reserve nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usd_per_day: float | None = Field(None, gt=0, description="USD per UTC calendar day.")
    usd_per_month: float | None = Field(None, gt=0, description="USD per UTC calendar month.")


# Columns of the Parquet ledger, in order. `estimated` marks rows whose token counts were
# counted locally because the provider reported no usage. `adapter` (null for the base model) came
# later: files written before it read with the column null (pyarrow.dataset fills it in).
LEDGER_COLUMNS = (
    "ts", "key_id", "route", "target", "model", "tokens_in", "tokens_out", "tokens_cached",
    "cost_usd", "latency_ms", "ttft_ms", "status", "attempts", "estimated", "stream", "pricing", "adapter",
)


_ROW_VALUES = attrgetter(*LEDGER_COLUMNS)


@dataclass(slots=True)
class LedgerRow:
    """One finished request (a plain dataclass: it is built on the hot path of every request).

    tokens_in counts ALL prompt tokens, cached ones included (OpenAI's `prompt_tokens`);
    tokens_cached is the part of tokens_in served from the provider's prompt cache.
    `target` is the provider name from gateway.yaml, `model` the upstream model name, `adapter`
    the LoRA adapter the client asked for (`<route>:<adapter>`; None: the base model), on every
    row of the request, its fallback targets' too.
    `cost_usd` is filled in by CostTracker.record; `pricing` says how: "table" (shipped price
    table), "config" (gateway.yaml override), "local" (accelerator-seconds share), "unpriced".
    """

    key_id: str
    route: str
    target: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: str = "ok"          # "ok" | "error" | "cancelled" | "idle" (unused local replica time)
    attempts: int = 1
    estimated: bool = False
    stream: bool = False
    cost_usd: float = 0.0
    pricing: str = ""
    adapter: str | None = None
    ts: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict (it deep-copies every field, ~150 us per request), nor a getattr
        # per column: one C-level attrgetter call reads all of them.
        return dict(zip(LEDGER_COLUMNS, _ROW_VALUES(self)))
