"""Generate Llama-family Hugging Face checkpoints locally: nothing comes from a hub.

`generate_llama(out_dir, preset="tiny")` writes a ~2 MB float32 model whose dimensions all shard
at TP=2 (heads, kv heads, intermediate, vocab even), used by the e2e parity tests.
`preset="bench"` writes a bfloat16 model of about `size_gb` GB (default 1.5), in several
safetensors shards plus an index, for the cold-start benchmarks.

Everything is deterministic: the same (preset, size_gb, seed) gives byte-identical files. Weights
come from numpy's PCG64 seeded per tensor (so the order tensors are written in does not matter),
safetensors files are written by hand here (sorted header, no timestamps), and the tokenizer is
a byte-level BPE trained on the built-in corpus in `tokenizer_corpus.py`.

Pure numpy + tokenizers: importing this module does not import torch, vLLM or Ray.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from cluster.models.tokenizer_corpus import corpus

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# A minimal ChatML-style template: enough for vLLM's chat endpoint and the OpenAI SDK's
# `chat.completions` to render messages into a prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class LlamaPreset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int
    dtype: str  # "float32" | "bfloat16"
    max_shard_bytes: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# tiny: head_dim 32 (vLLM's CPU attention supports it); heads 4, kv heads 2, intermediate 256 and
# vocab 512 are all even so every sharded dimension splits at TP=2. float32 so that the TP=2
# all-reduce (different summation order) cannot flip a greedy argmax the way bf16 rounding could.
TINY = LlamaPreset(hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256, vocab=512,
                   max_positions=1024, dtype="float32", max_shard_bytes=1 << 30)
# bench: a 1-2 GB Llama-ish shape (TinyLlama-1.1B widths); the layer count is derived from size_gb.
BENCH = LlamaPreset(hidden=2048, layers=0, heads=16, kv_heads=8, intermediate=5632, vocab=512,
                    max_positions=2048, dtype="bfloat16", max_shard_bytes=512 << 20)
PRESETS = {"tiny": TINY, "bench": BENCH}
_ST_DTYPE = {"float32": ("F32", 4), "bfloat16": ("BF16", 2)}


def _layer_params(p: LlamaPreset) -> int:
    kv = p.kv_heads * p.head_dim
    return 2 * p.hidden * p.hidden + 2 * p.hidden * kv + 3 * p.hidden * p.intermediate + 2 * p.hidden


def resolve_preset(preset: str, size_gb: float | None) -> LlamaPreset:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    if preset == "tiny":
        if size_gb is not None:
            raise ValueError("size_gb applies to preset='bench' only")
        return p
    size_gb = 1.5 if size_gb is None else size_gb
    if size_gb <= 0:
        raise ValueError(f"size_gb must be positive, got {size_gb}")
    itemsize = _ST_DTYPE[p.dtype][1]
    fixed = (2 * p.vocab * p.hidden + p.hidden) * itemsize
    per_layer = _layer_params(p) * itemsize
    # At least one layer; round up so the model is never smaller than asked.
    layers = max(1, math.ceil((size_gb * 1e9 - fixed) / per_layer))
    return replace(p, layers=layers)


def _tensor_specs(p: LlamaPreset) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, shape, uniform half-width) for every tensor, in HF Llama naming.

    Scales keep activations O(1) through the residual stream (1/sqrt(fan_in)) and make lm_head
    large enough that logits are peaked: greedy decoding then follows clear winners instead of
    near-ties, which keeps TP=1 vs TP=2 parity meaningful and output varied.
    """
    h, kv, i = p.hidden, p.kv_heads * p.head_dim, p.intermediate
    # uniform(-a, a) has std a/sqrt(3): a = sqrt(3) * std.
    def a(std: float) -> float:
        return math.sqrt(3.0) * std

    specs: list[tuple[str, tuple[int, ...], float]] = [("model.embed_tokens.weight", (p.vocab, h), a(1.0))]
    for layer in range(p.layers):
        pre = f"model.layers.{layer}."
        specs += [
            (pre + "input_layernorm.weight", (h,), 0.0),
            (pre + "self_attn.q_proj.weight", (h, h), a(1.0 / math.sqrt(h))),
            (pre + "self_attn.k_proj.weight", (kv, h), a(1.0 / math.sqrt(h))),
            (pre + "self_attn.v_proj.weight", (kv, h), a(1.0 / math.sqrt(h))),
            (pre + "self_attn.o_proj.weight", (h, h), a(1.0 / math.sqrt(h))),
            (pre + "post_attention_layernorm.weight", (h,), 0.0),
            (pre + "mlp.gate_proj.weight", (i, h), a(1.0 / math.sqrt(h))),
            (pre + "mlp.up_proj.weight", (i, h), a(1.0 / math.sqrt(h))),
            (pre + "mlp.down_proj.weight", (h, i), a(1.0 / math.sqrt(i))),
        ]
    specs += [("model.norm.weight", (h,), 0.0), ("lm_head.weight", (p.vocab, h), a(4.0 / math.sqrt(h)))]
    return specs


def _tensor_bytes(name: str, shape: tuple[int, ...], half_width: float, dtype: str, seed: int) -> bytes:
    if half_width == 0.0:  # RMSNorm weights: ones, as HF initialises them
        values = np.ones(shape, dtype=np.float32)
    else:
        # Seeded per (seed, tensor name): independent of write order and of other tensors.
        rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(name.encode())]))
        values = rng.random(shape, dtype=np.float32)
        values *= np.float32(2 * half_width)
        values -= np.float32(half_width)
    if dtype == "float32":
        return values.astype("<f4", copy=False).tobytes()
    # float32 -> bfloat16 with round-to-nearest-even on the raw bits (numpy has no bf16 type).
    bits = values.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return rounded.astype("<u2").tobytes()


def _plan_shards(specs, p: LlamaPreset) -> list[list[tuple[str, tuple[int, ...], float]]]:
    itemsize = _ST_DTYPE[p.dtype][1]
    shards: list[list] = [[]]
    size = 0
    for spec in specs:
        nbytes = math.prod(spec[1]) * itemsize
        if shards[-1] and size + nbytes > p.max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def _write_safetensors(path: Path, specs, p: LlamaPreset, seed: int) -> int:
    """Write one safetensors file tensor by tensor (never the whole shard in memory)."""
    st_dtype, itemsize = _ST_DTYPE[p.dtype]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in specs:
        nbytes = math.prod(shape) * itemsize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, half_width in specs:
            f.write(_tensor_bytes(name, shape, half_width, p.dtype, seed))
    return offset


def _train_tokenizer(vocab: int, seed: int) -> str:
    """Train a byte-level BPE of exactly `vocab` entries; returns tokenizer.json's text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    if tok.get_vocab_size() != vocab:
        raise RuntimeError(f"tokenizer trained to {tok.get_vocab_size()} entries, expected {vocab}; enlarge the corpus")
    # Llama prepends BOS to every encoded sequence.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return tok.to_str(pretty=True)


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _write_model(out: Path, p: LlamaPreset, seed: int) -> None:
    tokenizer_json = _train_tokenizer(p.vocab, seed)
    vocab = json.loads(tokenizer_json)["added_tokens"]
    ids = {t["content"]: t["id"] for t in vocab}
    (out / "tokenizer.json").write_text(tokenizer_json)
    (out / "tokenizer_config.json").write_text(_json({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": EOS,
        "model_max_length": p.max_positions,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }))
    (out / "special_tokens_map.json").write_text(_json({"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": EOS}))
    (out / "generation_config.json").write_text(_json({
        "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[EOS],
    }))
    (out / "config.json").write_text(_json({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden,
        "intermediate_size": p.intermediate,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "head_dim": p.head_dim,
        "vocab_size": p.vocab,
        "max_position_embeddings": p.max_positions,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "torch_dtype": p.dtype,
    }))

    specs = _tensor_specs(p)
    shards = _plan_shards(specs, p)
    if len(shards) == 1:
        _write_safetensors(out / "model.safetensors", shards[0], p, seed)
        return
    weight_map: dict[str, str] = {}
    total = 0
    for index, shard in enumerate(shards, start=1):
        fname = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        total += _write_safetensors(out / fname, shard, p, seed)
        weight_map.update({name: fname for name, _, _ in shard})
    (out / "model.safetensors.index.json").write_text(
        _json({"metadata": {"total_size": total}, "weight_map": weight_map})
    )


def generate_llama(out_dir, *, preset: str = "tiny", size_gb: float | None = None, seed: int = 0) -> Path:
    """Write a Llama HF checkpoint to `out_dir` (created; existing files of the same name replaced).

    The model is built in a sibling temp dir and moved in at the end, so a reader (or a second
    generator racing on the same path, e.g. two benchmarks) never sees a half-written checkpoint.
    """
    p = resolve_preset(preset, size_gb)
    out = Path(out_dir).expanduser().resolve()
    with built_beside(out) as tmp:
        _write_model(tmp, p, seed)
    return out


@contextmanager
def built_beside(out: Path) -> Iterator[Path]:
    """A temp dir next to `out` to build into; moved into place when the block succeeds (one
    atomic rename when `out` does not exist yet, else file by file, each replace atomic), removed
    either way."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # mkdtemp makes the dir 0700; give the result the permissions a plain mkdir would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        try:
            os.rename(tmp, out)
        except OSError:
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(tmp.iterdir()):
                os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def iter_tensor_names(preset: str = "tiny", size_gb: float | None = None) -> Iterator[str]:
    """The parameter names a generated checkpoint holds (used by tests and benches)."""
    return (name for name, _, _ in _tensor_specs(resolve_preset(preset, size_gb)))


def ensure_llama(out_dir: str | os.PathLike, *, preset: str = "bench", size_gb: float | None = None,
                 seed: int = 0) -> Path:
    """`out_dir`, generating it first if it holds no checkpoint yet.

    Several benches share one generated model directory; a file lock beside it makes whichever
    process comes first generate it while the others wait and then reuse it.
    """
    from filelock import FileLock

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}-model.lock")):
        if not (out / "config.json").is_file():
            print(f"generating the {preset} model ({size_gb} GB) into {out} ...", file=sys.stderr)
            generate_llama(out, preset=preset, size_gb=size_gb, seed=seed)
    return out
