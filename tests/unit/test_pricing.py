"""Price table, lookups, pricing math and token estimates (pure)."""
from __future__ import annotations

import math

import pytest

from gateway.costs.prices import PriceBook, load_price_table
from gateway.costs.pricing import accelerator_cost_usd, cost_usd, share_by_tokens
from gateway.costs.schema import ModelPrice
from gateway.costs.tokens import count_text_tokens, estimate_request_tokens, usage_from_openai


def test_price_table_ships_with_source_and_date():
    t = load_price_table()
    assert "openai.com" in t.source and t.as_of[:2] == "20"
    for name in ("gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-flash"):
        assert t.models[name].output_per_1m > t.models[name].input_per_1m > 0


@pytest.mark.parametrize("model,family", [
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"), ("gpt-4o-2024-08-06", "gpt-4o"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"), ("models/gemini-2.5-flash", "gemini-2.5-flash"),
    ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
])
def test_dated_ids_resolve_to_their_family(model, family):
    book = PriceBook()
    price, how = book.lookup("any", model)
    assert how == "table" and price == book.table.models[family]


def test_overrides_win_provider_first():
    cheap, cheaper = ModelPrice(input_per_1m=1, output_per_1m=2), ModelPrice(input_per_1m=0.5, output_per_1m=1)
    book = PriceBook(global_overrides={"gpt-4o": cheap}, provider_overrides={"azure": {"gpt-4o": cheaper}})
    assert book.lookup("azure", "gpt-4o-2024-08-06") == (cheaper, "config")
    assert book.lookup("openai", "gpt-4o") == (cheap, "config")
    assert book.lookup("openai", "my-finetune") == (None, "unpriced")
    assert book.lookup("openai", "gpt-4oops")[1] == "unpriced"        # a prefix must end at a boundary


def test_cost_bills_cached_tokens_at_the_cached_rate():
    p = ModelPrice(input_per_1m=2.0, output_per_1m=8.0, cached_input_per_1m=0.5)
    assert math.isclose(cost_usd(p, tokens_in=1000, tokens_out=100, tokens_cached=400),
                        (600 * 2.0 + 400 * 0.5 + 100 * 8.0) / 1e6)
    no_cache_rate = ModelPrice(input_per_1m=2.0, output_per_1m=8.0)
    assert cost_usd(no_cache_rate, tokens_in=1000, tokens_out=0, tokens_cached=400) == 2000 / 1e6


def test_local_cost_shares_sum_to_the_accelerator_bill():
    total = accelerator_cost_usd(90.0, usd_per_hour=4.0)                # 90 replica-seconds at $4/h
    assert math.isclose(total, 0.1)
    shares = share_by_tokens(total, [10, 30, 60])
    assert math.isclose(sum(shares), total, rel_tol=0, abs_tol=1e-15)
    assert shares[2] > shares[1] > shares[0]
    assert share_by_tokens(1.0, [0, 0]) == [0.5, 0.5]


def test_token_estimates():
    assert count_text_tokens("a" * 9) == 3 and count_text_tokens("") == 0
    body = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 16}
    assert estimate_request_tokens(body, endpoint="chat") == 10 + 4 + 16
    # No max_tokens: the route cap is pre-charged; a larger max_tokens is clamped to it.
    assert estimate_request_tokens({"messages": []}, endpoint="chat", max_tokens_cap=64) == 64
    assert estimate_request_tokens({"prompt": "abcd", "max_tokens": 999}, endpoint="completions",
                                   max_tokens_cap=8) == 1 + 8
    assert estimate_request_tokens({"input": ["abcd", "abcdefgh"]}, endpoint="embeddings") == 3


def test_usage_from_openai_reads_cached_tokens():
    u = {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 8}}
    assert usage_from_openai(u) == (12, 3, 8)
    assert usage_from_openai(None) is None
