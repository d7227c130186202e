"""Does an adapter fit a base (snapshots/adapters/base.py), and adapter.json's checked decode
(snapshots/adapters/record.py). Pure: no store."""
from __future__ import annotations

import json

import pytest

from snapshots.adapters import AdapterBase, AdapterBaseMismatch, AdapterCorrupt, AdapterError, AdapterInfo, check_base
from snapshots.adapters.base import check_fit, hf_shape
from snapshots.adapters.peft import LoraShape
from snapshots.adapters.record import decode, encode

URL = "s3://b/p/tiny/adapters/alice"


def _info(**base) -> AdapterInfo:
    b = dict(architecture="LlamaForCausalLM", hidden_size=256, target_modules=("q_proj", "v_proj"), rank=8,
             lora_alpha=16.0, base_model="tiny-b") | base
    files = {"adapter_config.json": {"nbytes": 10, "checksum": "00000000000000ff"},
             "adapter_model.safetensors": {"nbytes": 90, "checksum": "0123456789abcdef"}}
    return AdapterInfo(name="alice", model="tiny", url=URL, push_id="20260101T000000Z-0a1b2c3d", created_at=1.5,
                       nbytes=100, base=AdapterBase(**b), files=files)


def test_check_base_names_both_sides_in_one_line():
    with pytest.raises(AdapterBaseMismatch) as err:
        check_base(_info(), architecture="LlamaForCausalLM", hidden_size=128, served_model="tiny")
    assert str(err.value) == ("adapter 'alice' was trained for 'tiny-b' (LlamaForCausalLM, hidden 256); "
                              "this app serves 'tiny' (LlamaForCausalLM, hidden 128)")
    with pytest.raises(AdapterBaseMismatch, match=r"\(MistralForCausalLM, hidden 256\)$"):
        check_base(_info(), architecture="MistralForCausalLM", hidden_size=256, served_model="m")


def test_check_base_refuses_a_rank_above_max_lora_rank():
    fits = _info(hidden_size=128)
    check_base(fits, architecture="LlamaForCausalLM", hidden_size=128, served_model="tiny")
    check_base(fits, architecture="LlamaForCausalLM", hidden_size=128, served_model="tiny", max_lora_rank=8)
    with pytest.raises(AdapterBaseMismatch, match="adapter 'alice' has rank 8, above max_lora_rank 4 of the app serving 'tiny'"):
        check_base(fits, architecture="LlamaForCausalLM", hidden_size=128, served_model="tiny", max_lora_rank=4)


def test_check_fit_at_push():
    shape = LoraShape(rank=4, lora_alpha=8.0, target_modules=("q_proj",), hidden_size=256)
    with pytest.raises(AdapterBaseMismatch) as err:
        check_fit(shape, name="alice", model="tiny", architecture="LlamaForCausalLM", hidden_size=128)
    assert str(err.value) == "adapter 'alice' (hidden 256) does not fit base 'tiny' (LlamaForCausalLM, hidden 128)"
    check_fit(shape, name="alice", model="tiny", architecture="LlamaForCausalLM", hidden_size=256)


def test_hf_shape_reads_the_config():
    raw = json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 128}).encode()
    assert hf_shape(raw, where="c") == ("LlamaForCausalLM", 128)
    mm = json.dumps({"architectures": ["LlavaForConditionalGeneration"], "text_config": {"hidden_size": 4096}})
    assert hf_shape(mm.encode(), where="c") == ("LlavaForConditionalGeneration", 4096)
    with pytest.raises(AdapterError, match="c names no architecture"):
        hf_shape(b'{"hidden_size": 128}', where="c")
    with pytest.raises(AdapterError, match="c has no hidden_size"):
        hf_shape(b'{"architectures": ["X"]}', where="c")


def test_adapter_json_round_trips_with_sorted_keys():
    info = _info()
    raw = encode(info)
    data = json.loads(raw)
    assert list(data) == sorted(data) and data["format_version"] == 1 and data["checksum_algorithm"] == "xxh3_64"
    assert data["base"]["target_modules"] == ["q_proj", "v_proj"]
    assert decode(raw, url=URL, model="tiny", name="alice") == info
    assert info.to_dict()["base"]["target_modules"] == ["q_proj", "v_proj"]
    assert json.loads(json.dumps(info.to_dict()))["url"] == URL


@pytest.mark.parametrize("change, found", [
    (lambda d: d.update(name="bob"), "it describes 'bob' of 'tiny'"),
    (lambda d: d.update(push_id="../../etc"), "push_id '../../etc' is not a push id"),
    (lambda d: d["files"].update({"../x": {"nbytes": 1, "checksum": "0" * 16}}), "files are"),
    (lambda d: d["files"].pop("adapter_config.json"), "files are"),
    (lambda d: d["files"]["adapter_config.json"].update(checksum="xyz"), "invalid"),
    (lambda d: d["base"].update(hidden_size="128"), "invalid"),
    (lambda d: d.update(checksum_algorithm="crc32"), "checksum algorithm 'crc32'"),
    (lambda d: d.update(extra=1), "invalid"),
])
def test_a_bad_adapter_json_is_corrupt_and_named(change, found):
    data = json.loads(encode(_info()))
    change(data)
    with pytest.raises(AdapterCorrupt) as err:
        decode(json.dumps(data).encode(), url=URL, model="tiny", name="alice")
    assert found in str(err.value) and f"{URL}/adapter.json" in str(err.value)


def test_a_newer_format_is_refused_as_unsupported_not_corrupt():
    data = json.loads(encode(_info())) | {"format_version": 2, "new_field": 1}
    with pytest.raises(AdapterError, match="unsupported adapter format version 2") as err:
        decode(json.dumps(data).encode(), url=URL, model="tiny", name="alice")
    assert not isinstance(err.value, AdapterCorrupt)
    with pytest.raises(AdapterCorrupt, match="not valid JSON"):
        decode(b"{", url=URL, model="tiny", name="alice")
