"""Price table, lookups, pricing math and token estimates (pure)."""
from __future__ import annotations

import math

import pytest

from gateway.costs.pricing import (PriceBook, accelerator_cost_usd, cost_usd, load_price_table,
                                   share_by_tokens)
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


# -- issue 11 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("odd", [
    {"prompt_tokens": -3, "completion_tokens": "n/a"},
    {"prompt_tokens": "n/a", "completion_tokens": 5},
    {"prompt_tokens": 5, "completion_tokens": -1},
    {"completion_tokens": 5},                                          # prompt_tokens missing
    {"prompt_tokens": 5},                                              # neither completion nor total
    {"prompt_tokens": True, "completion_tokens": 1},
    ["not", "an", "object"], "n/a", 7,
])
def test_odd_usage_is_rejected_so_tokens_get_counted(odd):
    from gateway.providers.base import Usage
    assert usage_from_openai(odd) is None
    assert Usage.from_openai(odd) is None                             # never raises


def test_usable_usage_variants():
    assert usage_from_openai({"prompt_tokens": 8.0, "completion_tokens": 2}) == (8, 2, 0)
    assert usage_from_openai({"prompt_tokens": 8, "total_tokens": 8}) == (8, 0, 0)      # embeddings
    assert usage_from_openai({"prompt_tokens": 4, "completion_tokens": 1,
                              "prompt_tokens_details": "none"}) == (4, 1, 0)
    assert usage_from_openai({"prompt_tokens": 4, "completion_tokens": 1,
                              "prompt_tokens_details": {"cached_tokens": 9}}) == (4, 1, 4)


def test_estimate_counts_the_larger_max_tokens_field():
    body = {"messages": [], "max_completion_tokens": 1, "max_tokens": 500}
    assert estimate_request_tokens(body, endpoint="chat") == 500


def test_worst_case_is_the_dearest_target_and_local_counts_zero():
    from gateway.costs.pricing import worst_case_usd
    cheap, dear = ModelPrice(input_per_1m=1, output_per_1m=2), ModelPrice(input_per_1m=3, output_per_1m=10)
    w = worst_case_usd([cheap, None, dear], prompt_tokens=100, max_output_tokens=50)
    assert math.isclose(w, (100 * 3 + 50 * 10) / 1e6)
    assert worst_case_usd([None], prompt_tokens=100, max_output_tokens=50) == 0.0


def test_requests_without_an_answer_pay_no_local_replica_time():
    """Issue 11: 5 failed requests (0 tokens) on a local route shared the period's replica cost."""
    from gateway.costs.pricing import allocate_local
    failed = [{"tokens_in": 0, "tokens_out": 0, "status": "error"} for _ in range(5)]
    shares, unbilled = allocate_local(0.000093, failed)
    assert shares == [0.0] * 5 and math.isclose(unbilled, 0.000093)
    ok = {"tokens_in": 10, "tokens_out": 30, "status": "ok"}
    shares, unbilled = allocate_local(1.0, [*failed, ok])
    assert shares[:5] == [0.0] * 5 and math.isclose(shares[5], 1.0) and unbilled == 0.0
    partial = {"tokens_in": 10, "tokens_out": 2, "status": "error"}       # a cut stream's output
    shares, _ = allocate_local(1.0, [partial, failed[0]])
    assert shares == [1.0, 0.0]


def test_prompt_estimate_survives_malformed_content_parts():
    """`{"type": "text", "text": 5}` used to crash the estimate (a bare 500) before validation."""
    from gateway.costs.tokens import estimate_prompt_tokens

    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}, {"type": "text", "text": "hi"},
                                                      "bare", None]}]}
    assert estimate_prompt_tokens(body, endpoint="chat") >= 1
