"""A PEFT LoRA dir checked and described (snapshots/adapters/peft.py): config parsing, the
hidden size and rank read from the safetensors shapes. Pure: no store, no torch."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from snapshots.adapters.errors import AdapterError
from snapshots.adapters.peft import (
    describe,
    infer_hidden,
    lora_pairs,
    pair_ranks,
    parse_lora_config,
    read_adapter_dir,
    safetensors_shapes,
)
from tests.lora_dirs import lora_tensors, make_lora_dir


def _cfg(**kw) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], **kw}).encode()


def _shapes(**kw):
    return {k: v.shape for k, v in lora_tensors(**kw).items()}


def test_a_lora_dir_is_described_from_config_and_shapes(tmp_path):
    d = make_lora_dir(tmp_path / "a", hidden=128, rank=4, alpha=8, targets=("v_proj", "q_proj", "o_proj"))
    shape = read_adapter_dir(d, name="alice")
    assert (shape.rank, shape.lora_alpha, shape.hidden_size) == (4, 8.0, 128)
    assert shape.target_modules == ("o_proj", "q_proj", "v_proj")  # sorted
    assert shape.base_model_name_or_path == "tiny"


@pytest.mark.parametrize("raw, found", [
    (b"{not json", "is not valid JSON"),
    (b"[1]", "is not a JSON object"),
    (_cfg(peft_type="IA3"), "peft_type 'IA3'; only LORA adapters"),
    (json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}).encode(), "peft_type None"),
    (_cfg(r=0), "r is 0, not a positive integer"),
    (_cfg(r=True), "r is True"),
    (_cfg(r="8"), "r is '8'"),
    (_cfg(lora_alpha="16"), "lora_alpha is '16', not a number"),
    (_cfg(target_modules=[]), "target_modules must name at least one module"),
    (_cfg(target_modules=None), "target_modules is None"),
])
def test_bad_configs_are_refused_naming_adapter_and_file(raw, found):
    with pytest.raises(AdapterError) as err:
        parse_lora_config(raw, name="alice")
    assert found in str(err.value)
    assert str(err.value).startswith("adapter 'alice': adapter_config.json")
    assert "\n" not in str(err.value)


def test_a_dir_without_the_two_files_is_refused(tmp_path):
    with pytest.raises(AdapterError, match="is not a directory"):
        read_adapter_dir(tmp_path / "missing", name="a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="has no adapter_config.json"):
        read_adapter_dir(tmp_path / "empty", name="a")
    d = make_lora_dir(tmp_path / "bin")
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    with pytest.raises(AdapterError, match=r"has no adapter_model.safetensors \(adapter_model.bin: save it with"):
        read_adapter_dir(d, name="a")


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(AdapterError, match="x.safetensors is not a safetensors file"):
        safetensors_shapes(tmp_path / "x.safetensors", name="a")
    (tmp_path / "y.safetensors").write_bytes((5).to_bytes(8, "little") + b"nope!")
    with pytest.raises(AdapterError, match="y.safetensors is not a safetensors file"):
        safetensors_shapes(tmp_path / "y.safetensors", name="a")


def test_shapes_come_from_the_header_only(tmp_path):
    save_file({"a.lora_A.weight": np.zeros((3, 7), np.float32), "x": np.zeros((2,), np.float16)},
              str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    assert safetensors_shapes(tmp_path / "m.safetensors", name="a") == {"a.lora_A.weight": (3, 7), "x": (2,)}


def test_hidden_size_from_reading_and_writing_projections():
    assert infer_hidden(lora_pairs(_shapes(hidden=256, targets=("q_proj",)), name="a"), name="a") == 256
    assert infer_hidden(lora_pairs(_shapes(hidden=64, targets=("o_proj", "down_proj")), name="a"), name="a") == 64
    # k_proj's out (hidden/2) and down_proj's in (2*hidden) are not the hidden size and are not read as it
    assert infer_hidden(lora_pairs(_shapes(hidden=96, targets=("k_proj", "down_proj")), name="a"), name="a") == 96


def test_shapes_that_disagree_or_say_nothing_are_refused():
    mixed = {**_shapes(hidden=128, targets=("q_proj",)), **{
        "base_model.model.model.layers.9.self_attn.o_proj.lora_B.weight": (256, 4),
        "base_model.model.model.layers.9.self_attn.o_proj.lora_A.weight": (4, 256)}}
    with pytest.raises(AdapterError, match=r"disagrees with itself on the hidden size \(.*q_proj says 128, .*o_proj says 256\)"):
        infer_hidden(lora_pairs(mixed, name="a"), name="a")
    unknown = {"base_model.model.lm_head.lora_A.weight": (4, 128), "base_model.model.lm_head.lora_B.weight": (512, 4)}
    with pytest.raises(AdapterError, match="cannot tell its hidden size"):
        infer_hidden(lora_pairs(unknown, name="a"), name="a")
    with pytest.raises(AdapterError, match="holds no lora_A / lora_B weights"):
        lora_pairs({"model.embed_tokens.weight": (512, 128)}, name="a")
    with pytest.raises(AdapterError, match="not 2-D"):
        lora_pairs({"m.q_proj.lora_A.weight": (4, 128, 1)}, name="a")


def test_ranks_must_agree_between_a_and_b_and_with_the_config():
    bad = {"m.q_proj.lora_A.weight": (4, 128), "m.q_proj.lora_B.weight": (128, 8)}
    with pytest.raises(AdapterError, match=r"m.q_proj has lora_A \[4, 128\] and lora_B \[128, 8\]"):
        pair_ranks(lora_pairs(bad, name="a"), name="a")
    cfg = parse_lora_config(_cfg(r=8, target_modules=["q_proj", "v_proj"]), name="a")
    with pytest.raises(AdapterError, match=r"has rank 4, but adapter_config.json says r=8"):
        describe(cfg, _shapes(rank=4), name="a")
    # rank_pattern lets modules differ: the adapter's rank is the largest one
    cfg = parse_lora_config(_cfg(r=4, rank_pattern={"v_proj": 16}), name="a")
    shapes = {**_shapes(rank=4, targets=("q_proj",)), **_shapes(rank=16, targets=("v_proj",))}
    assert describe(cfg, shapes, name="a").rank == 16


def test_string_target_modules_are_named_from_the_tensors():
    cfg = parse_lora_config(_cfg(r=4, target_modules="all-linear"), name="a")
    shape = describe(cfg, _shapes(rank=4, targets=("up_proj", "q_proj", "gate_proj")), name="a")
    assert shape.target_modules == ("gate_proj", "q_proj", "up_proj")
