"""The generated Llama checkpoints: deterministic, complete, shardable at TP=2, tokenizer usable."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from cluster.models import tinyllama
from cluster.models.tinyllama import generate_llama, iter_tensor_names, resolve_preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_llama(tmp_path_factory.mktemp("m") / "tiny")


def _files(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())}


def test_same_seed_gives_byte_identical_files(tiny, tmp_path):
    again = generate_llama(tmp_path / "again")
    assert _files(again) == _files(tiny)


def test_other_seed_changes_weights(tiny, tmp_path):
    other = generate_llama(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny / "model.safetensors").read_bytes()


def test_layout_is_a_llama_hf_checkpoint(tiny):
    names = {f.name for f in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= names
    assert not any(n.startswith(".") for n in names)
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    # ~1-2 MB: fast to load in every e2e test
    assert (tiny / "model.safetensors").stat().st_size < 3_000_000


def test_every_sharded_dimension_splits_at_tp2(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"):
        assert cfg[key] % 2 == 0, key
    assert cfg["hidden_size"] == cfg["num_attention_heads"] * cfg["head_dim"]


def test_weights_match_config_and_are_finite(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    tensors = load_file(tiny / "model.safetensors")
    assert set(tensors) == set(iter_tensor_names("tiny"))
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    assert tensors["model.embed_tokens.weight"].shape == (v, h)
    assert tensors["lm_head.weight"].shape == (v, h)
    assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (kv, h)
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (h, cfg["intermediate_size"])
    for name, t in tensors.items():
        assert str(t.dtype) == "float32", name
        assert (t == t).all(), name  # no NaN
    # random, not constant: the model must give varied greedy output
    assert tensors["lm_head.weight"].std() > 0.1


def test_tokenizer_roundtrips_and_prepends_bos(tiny):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    cfg = json.loads((tiny / "config.json").read_text())
    assert tok.get_vocab_size() == cfg["vocab_size"]
    text = "Hello world! The cluster restores the weights."
    enc = tok.encode(text)
    assert enc.ids[0] == cfg["bos_token_id"]
    assert len(enc.ids) < len(text)  # merges were learned
    assert tok.decode(enc.ids) == text
    tcfg = json.loads((tiny / "tokenizer_config.json").read_text())
    assert "messages" in tcfg["chat_template"] and tcfg["eos_token"] == "</s>"
    gen = json.loads((tiny / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"] == tok.token_to_id("</s>")


def test_bench_size_rounds_up_to_whole_layers():
    p = resolve_preset("bench", 1.5)
    per_layer = tinyllama._layer_params(p) * 2
    total = sum(math.prod(shape) for _, shape, _ in tinyllama._tensor_specs(p)) * 2
    assert 1.5e9 <= total < 1.5e9 + per_layer
    assert p.dtype == "bfloat16" and p.heads % 2 == 0 and p.kv_heads % 2 == 0


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        generate_llama(tmp_path / "x", preset="huge")
    with pytest.raises(ValueError, match="bench"):
        generate_llama(tmp_path / "x", preset="tiny", size_gb=1.0)
    assert not (tmp_path / "x").exists()


def test_large_models_are_sharded_with_an_index(tmp_path):
    # A small bf16 preset with a tiny shard limit exercises the multi-file path the bench model takes.
    small = replace(tinyllama.BENCH, hidden=128, heads=4, kv_heads=2, intermediate=256, layers=2,
                    max_shard_bytes=100_000)
    tinyllama._write_model(tmp_path, small, seed=0)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    import torch  # bf16 needs torch's loader (numpy has no bfloat16)
    from safetensors.torch import load_file as load_torch

    seen: dict = {}
    for s in shards:
        seen.update(load_torch(s))
    assert set(seen) == set(index["weight_map"])
    assert all(t.dtype == torch.bfloat16 and torch.isfinite(t).all() for t in seen.values())
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in seen.values())


def test_cli_writes_the_tiny_model(tmp_path):
    from cluster.cli.model import app

    result = CliRunner().invoke(app, ["tiny", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (tmp_path / "cli" / "config.json").exists()
    bad = CliRunner().invoke(app, ["bench", str(tmp_path / "b"), "--size-gb", "-1"])
    assert bad.exit_code == 1 and "size_gb must be positive" in bad.output
