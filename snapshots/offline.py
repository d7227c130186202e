"""Offline snapshot of an HF Llama checkpoint (`snapshot create --engine none`).

Streams: each rank reads only its own slice of each tensor from the safetensors files (lazy
`get_slice`), writes it, and drops it, so no process ever holds a whole rank, let alone the model.
The HF config/tokenizer/generation files are copied under engine/hf/ so the snapshot is
self-contained.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from . import tp_split
from .vllm_engine.engine_state import HF_SIDE_FILES
from .errors import SnapshotError
from .format import DEFAULT_PART_BYTES
from .store import SnapshotStore

_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
             "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def hf_aux_files(hf_dir: Path) -> list[Path]:
    return [hf_dir / n for n in HF_SIDE_FILES if (hf_dir / n).is_file()]


def safetensors_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [hf_dir / n for n in names]
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise SnapshotError(f"no *.safetensors files in {hf_dir}")
    return files


def tensor_bytes_total(hf_dir: Path) -> int:
    """Sum of all tensor sizes from the safetensors headers (no tensor data read)."""
    total = 0
    for f in safetensors_files(hf_dir):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


def create_offline_snapshot(hf_dir: str | Path, *, tp: int, store_url: str, name: str, snapshot_id: str | None = None,
                            storage_options: dict | None = None, part_bytes: int = DEFAULT_PART_BYTES,
                            progress: Callable[[int], None] | None = None,
                            on_total: Callable[[int], None] | None = None) -> str:
    """TP-split `hf_dir` into a new snapshot of `name` in `store_url`; returns its full URL.

    progress(n) is called with the bytes of every tensor written; on_total(n) once, up front, with
    the sum over all ranks (replicated tensors count once per rank).
    """
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise SnapshotError(f"{hf_dir} is not an HF model dir (no config.json)")
    config = json.loads(config_path.read_text())
    tp_split.check_config(config, tp)
    files = safetensors_files(hf_dir)
    # Validate every name against the TP rules before claiming the id (fail before writing).
    names_by_file, planned = _plan(files, tp)
    if on_total:
        on_total(planned)
    store = SnapshotStore(store_url, storage_options)
    writer = store.create_writer(name, snapshot_id, tp_size=tp, part_bytes=part_bytes)
    dtype = None
    with writer:
        for rank in range(tp):
            with writer.rank_writer(rank) as rw:
                first = _write_rank(rw, names_by_file, tp, rank, progress)
                dtype = dtype or first
        for aux in hf_aux_files(hf_dir):
            writer.put_file(f"engine/hf/{aux.name}", aux.read_bytes())
        writer.commit(
            {
                "engine": {"name": "none", "version": None},
                "dtype": config.get("torch_dtype") or config.get("dtype") or dtype,
                "model_revision": str(hf_dir.resolve()),
                "architecture": (config.get("architectures") or [None])[0],
                "source": "offline-tp-split",
            }
        )
    return writer.url


def _plan(files: list[Path], tp: int) -> tuple[dict[Path, list[str]], int]:
    """(tensor names per file, bytes all ranks will write); raises on a name or dim the TP rules
    cannot split."""
    from safetensors import safe_open

    names_by_file = {}
    planned = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            names_by_file[f] = sorted(st.keys())
            for n in names_by_file[f]:
                sl = st.get_slice(n)
                shape = tuple(sl.get_shape())
                numel = 1
                for d in shape:
                    numel *= d
                itemsize = _ITEMSIZE.get(sl.get_dtype(), 4)
                spec = tp_split.shard_spec(n)
                tp_split.rank_slices(n, shape, tp, 0)  # raises on an indivisible dim
                planned += numel * itemsize * (tp if spec.kind == tp_split.REPLICATED or tp == 1 else 1)
    return names_by_file, planned


def _write_rank(rw, names_by_file: dict[Path, list[str]], tp: int, rank: int,
                progress: Callable[[int], None] | None) -> str | None:
    """Write rank `rank`'s slice of every tensor; returns the dtype of the first one."""
    from safetensors import safe_open

    dtype = None
    for f, names in names_by_file.items():
        with safe_open(str(f), framework="pt") as st:
            for n in names:
                sl = st.get_slice(n)
                idx = tp_split.rank_slices(n, tuple(sl.get_shape()), tp, rank)
                t = sl[idx] if idx else st.get_tensor(n)
                dtype = dtype or str(t.dtype).removeprefix("torch.")
                rw.add(n, t)
                if progress:
                    progress(t.numel() * t.element_size())
    return dtype
