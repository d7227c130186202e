"""TP split math on a real generated Llama checkpoint: split then merge is the identity."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from snapshots import tp_split
from cluster.models.tinyllama import generate_llama


@pytest.fixture(scope="module")
def llama_state(tmp_path_factory) -> dict[str, torch.Tensor]:
    d = generate_llama(tmp_path_factory.mktemp("tiny"), preset="tiny")
    state = load_file(str(d / "model.safetensors"))
    # Biases exist in some Llama-family models (Qwen2 q/k/v, others on o/down); cover their rules too.
    state["model.layers.0.self_attn.q_proj.bias"] = torch.randn(state["model.layers.0.self_attn.q_proj.weight"].shape[0])
    state["model.layers.0.self_attn.o_proj.bias"] = torch.randn(state["model.layers.0.self_attn.o_proj.weight"].shape[0])
    return state


@pytest.mark.parametrize("tp", [1, 2])
def test_split_then_merge_is_identity_for_every_parameter(llama_state, tp):
    for name, tensor in llama_state.items():
        shards = tp_split.split(name, tensor, tp)
        assert len(shards) == tp
        merged = tp_split.merge(name, [s.contiguous() for s in shards])
        assert merged.dtype == tensor.dtype and torch.equal(merged, tensor), name


def test_shards_have_the_expected_shapes(llama_state):
    q = llama_state["model.layers.0.self_attn.q_proj.weight"]
    o = llama_state["model.layers.0.self_attn.o_proj.weight"]
    norm = llama_state["model.norm.weight"]
    assert tp_split.split("model.layers.0.self_attn.q_proj.weight", q, 2)[1].shape == (q.shape[0] // 2, q.shape[1])
    assert tp_split.split("model.layers.0.self_attn.o_proj.weight", o, 2)[0].shape == (o.shape[0], o.shape[1] // 2)
    assert all(torch.equal(s, norm) for s in tp_split.split("model.norm.weight", norm, 2))
    # rank 1's column shard is the second half of the rows
    assert torch.equal(tp_split.split("model.layers.0.self_attn.q_proj.weight", q, 2)[1], q[q.shape[0] // 2:])


def test_every_generated_parameter_has_a_rule(llama_state):
    kinds = {tp_split.shard_spec(n).kind for n in llama_state}
    assert kinds == {tp_split.COLUMN, tp_split.ROW, tp_split.REPLICATED}


def test_unknown_parameter_and_indivisible_dims_fail_loudly():
    with pytest.raises(tp_split.TPSplitError, match="no tensor-parallel rule"):
        tp_split.shard_spec("model.layers.0.mystery.weight")
    with pytest.raises(tp_split.TPSplitError, match="not divisible by tp=3"):
        tp_split.split("lm_head.weight", torch.zeros(8, 4), 3)
    with pytest.raises(tp_split.TPSplitError, match="num_key_value_heads=2 is not divisible by tp=4"):
        tp_split.check_config({"num_attention_heads": 8, "num_key_value_heads": 2}, 4)


def test_merge_refuses_diverging_replicas():
    with pytest.raises(tp_split.TPSplitError, match="differs between rank 0 and rank 1"):
        tp_split.merge("model.norm.weight", [torch.zeros(4), torch.ones(4)])
