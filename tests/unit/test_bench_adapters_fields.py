"""bench/adapters.py's JSON line keeps issue 23's field names, and its numbers are what the
table says they are (pure helpers in bench/adapters_data.py; no vLLM, Ray or store)."""
from __future__ import annotations

import pytest

from bench.adapters_data import adapter_name, bench_json, pct, side_summary, zipf_plan

FIELDS = ["bench", "adapters", "active", "adapter_cold_p50_ms", "adapter_cold_p99_ms", "baseline_adapter_cold_p50_ms",
          "speedup", "tokens_per_s", "base_tokens_per_s", "runs"]


def _run(cold_load_ms, **kw):
    return {"cold_load_ms": cold_load_ms, "cold_ttft_ms": [c + 20 for c in cold_load_ms], "warm_ttft_ms": 20.0,
            "base_ttft_ms": 15.0, "tokens_per_s": 100.0, "base_tokens_per_s": 200.0, "errors": 0, **kw}


def test_the_json_line_has_the_issue_fields_first():
    thaw = side_summary([_run([10.0, 30.0]), _run([20.0], tokens_per_s=120.0)])
    base = side_summary([_run([100.0, 300.0, 200.0])])
    out = bench_json(adapters=1000, active=100, thawline=thaw, baseline=base, runs=2, baseline_kind="ray")
    assert list(out)[:len(FIELDS)] == FIELDS
    assert out["bench"] == "adapters" and out["runs"] == 2 and out["baseline_kind"] == "ray"
    # cold loads pooled over the runs: p50 of [10, 20, 30]
    assert out["adapter_cold_p50_ms"] == 20.0
    assert out["baseline_adapter_cold_p50_ms"] == 200.0
    assert out["speedup"] == 10.0
    assert out["tokens_per_s"] == 110.0 and out["base_tokens_per_s"] == 200.0


def test_no_samples_give_nulls_not_a_crash():
    empty = {"cold_p50_ms": None, "cold_p99_ms": None, "tokens_per_s": None, "base_tokens_per_s": None}
    out = bench_json(adapters=10, active=5, thawline=empty, baseline=empty, runs=1)
    assert out["speedup"] is None and out["adapter_cold_p50_ms"] is None


def test_percentiles_interpolate_like_numpy():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert pct(xs, 50) == 3.0
    assert pct(xs, 99) == pytest.approx(4.96)
    assert pct([], 50) is None


def test_the_plan_is_deterministic_and_zipf_skewed():
    a = zipf_plan(1000, 100, 300, seed=23)
    assert a == zipf_plan(1000, 100, 300, seed=23)
    assert len(a["active"]) == len(set(a["active"])) == 100
    assert all(r["adapter"] in a["active"] for r in a["requests"])
    counts = [sum(r["adapter"] == name for r in a["requests"]) for name in a["active"]]
    assert counts[0] == max(counts) and counts[0] > 300 / 100 * 5  # rank 1 far above uniform
    assert adapter_name(7) == "tlb23-0007"
    with pytest.raises(ValueError):
        zipf_plan(10, 11, 5)
