"""The generated LoRA adapters: deterministic, peft-loadable, and visibly changing greedy output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from cluster.models.tinyllama import generate_llama
from cluster.models.tinylora import DEFAULT_TARGETS, ensure_lora, generate_lora

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Hello world!", "The cluster restores", "Once upon a time"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return generate_llama(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def lora1(base, tmp_path_factory) -> Path:
    return generate_lora(base, tmp_path_factory.mktemp("l") / "lora1", seed=1)


def _files(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())}


def test_layout_is_a_peft_adapter(lora1, base):
    assert sorted(f.name for f in lora1.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((lora1 / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert cfg["target_modules"] == sorted(DEFAULT_TARGETS)
    # a stable name, never the (tmp) path the base was generated at
    assert cfg["base_model_name_or_path"] == base.name == "tiny"
    assert str(base.parent) not in (lora1 / "adapter_config.json").read_text()


def test_tensors_cover_every_target_with_rank_r(lora1, base):
    model_cfg = json.loads((base / "config.json").read_text())
    h, kv = model_cfg["hidden_size"], model_cfg["num_key_value_heads"] * model_cfg["head_dim"]
    out_dim = {"q_proj": h, "k_proj": kv, "v_proj": kv, "o_proj": h}
    tensors = load_file(lora1 / "adapter_model.safetensors")
    expected = {}
    for layer in range(model_cfg["num_hidden_layers"]):
        for proj, out in out_dim.items():
            pre = f"base_model.model.model.layers.{layer}.self_attn.{proj}."
            expected[pre + "lora_A.weight"] = (8, h)
            expected[pre + "lora_B.weight"] = (out, 8)
    assert {k: v.shape for k, v in tensors.items()} == expected
    # peft's init zeroes lora_B (a no-op adapter); these are seeded weights instead
    assert all(abs(v).max() > 0 for v in tensors.values())


def test_same_seed_gives_byte_identical_files(lora1, base, tmp_path):
    assert _files(generate_lora(base, tmp_path / "again", seed=1)) == _files(lora1)


def test_identical_across_hash_seeds(lora1, base, tmp_path):
    """peft writes target_modules from a set (hash order): another PYTHONHASHSEED must not matter."""
    code = ("import sys; from cluster.models.tinylora import generate_lora; "
            "generate_lora(sys.argv[1], sys.argv[2], seed=1)")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", code, str(base), str(tmp_path / "other")], check=True, env=env,
                   cwd=REPO_ROOT, capture_output=True, timeout=300)
    assert _files(tmp_path / "other") == _files(lora1)


def test_other_seed_changes_weights_only(lora1, base, tmp_path):
    import torch

    rng_before = torch.random.get_rng_state()
    other = generate_lora(base, tmp_path / "lora2", seed=2)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's torch RNG is untouched
    assert (other / "adapter_model.safetensors").read_bytes() != (lora1 / "adapter_model.safetensors").read_bytes()
    assert (other / "adapter_config.json").read_bytes() == (lora1 / "adapter_config.json").read_bytes()


def test_rank_targets_and_scale_zero(base, tmp_path):
    d = generate_lora(base, tmp_path / "r4", seed=3, rank=4, target_modules=("v_proj", "q_proj"), scale=0.0)
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["target_modules"] == ["q_proj", "v_proj"]
    tensors = load_file(d / "adapter_model.safetensors")
    assert {k.split(".")[-3] for k in tensors} == {"q_proj", "v_proj"}
    assert all(not v.any() for k, v in tensors.items() if ".lora_B." in k)  # scale 0: a no-op adapter


def test_bad_arguments(base, tmp_path):
    with pytest.raises(ValueError, match="match no module"):
        generate_lora(base, tmp_path / "x", seed=1, target_modules=("q_proj", "nope_proj"))
    with pytest.raises(ValueError, match="rank"):
        generate_lora(base, tmp_path / "x", seed=1, rank=0)
    with pytest.raises(FileNotFoundError):
        generate_lora(tmp_path / "no-model", tmp_path / "x", seed=1)
    assert not (tmp_path / "x").exists()  # nothing half-written left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.tmp-")]


def test_ensure_lora_generates_once(base, tmp_path):
    d = ensure_lora(base, tmp_path / "e", seed=5)
    before = _files(d)
    (d / "adapter_model.safetensors").touch()
    mtime = (d / "adapter_model.safetensors").stat().st_mtime_ns
    assert ensure_lora(base, tmp_path / "e", seed=5) == d
    assert (d / "adapter_model.safetensors").stat().st_mtime_ns == mtime and _files(d) == before


def _greedy(model, tok, n: int = 4) -> list[list[int]]:
    out = []
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=n, do_sample=False)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


def test_each_seed_changes_greedy_output(base, lora1, tmp_path):
    """Loaded back through peft, every adapter changes the first generated tokens of every prompt."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(base)

    def load():
        return LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).eval()

    outputs = {"base": _greedy(load(), tok)}
    for name, d in {"lora1": lora1, "lora2": generate_lora(base, tmp_path / "lora2", seed=2)}.items():
        outputs[name] = _greedy(PeftModel.from_pretrained(load(), d).eval(), tok)
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            # differs within the first 2 tokens for every prompt
            assert all(x[:2] != y[:2] for x, y in zip(outputs[a], outputs[b])), (a, b, outputs)
