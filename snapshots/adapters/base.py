"""Does an adapter fit a base model: at push (against the base's latest snapshot) and at serve
time (`check_base`, against what the app serves). Every refusal is one line naming both sides."""
from __future__ import annotations


from snapshots import fsutil
from snapshots.errors import SnapshotNotFound
from snapshots.store import SnapshotStore
from snapshots.vllm_engine.engine_state import HF_DIR

from .errors import AdapterBaseMismatch, AdapterError, json_object
from .peft import LoraShape
from .record import AdapterInfo

HF_CONFIG = f"{HF_DIR}/config.json"  # every snapshot carries its HF config there (offline and engine)


def hf_shape(raw: bytes, *, where: str) -> tuple[str, int]:
    """(architecture, hidden_size) from an HF config.json (a multimodal one's text_config too)."""
    cfg = json_object(raw, where)
    archs = cfg.get("architectures")
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    hidden = cfg.get("hidden_size", text.get("hidden_size"))
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise AdapterError(f"{where} names no architecture (architectures: {archs!r})")
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise AdapterError(f"{where} has no hidden_size (got {hidden!r})")
    return archs[0], hidden


def base_shape(snapshots: SnapshotStore, model: str, *, name: str) -> tuple[str, int]:
    """(architecture, hidden_size) of `model`'s latest committed snapshot in the store."""
    try:
        snap = snapshots.load(f"{model}/latest")
    except SnapshotNotFound:
        raise AdapterError(f"cannot push adapter {name!r}: no committed snapshot of base model {model!r} in "
                           f"{snapshots.url} (make one first: thawline snapshot create)") from None
    try:
        raw = snapshots.fs.cat_file(fsutil.join(snap.ref.path, HF_CONFIG))
    except FileNotFoundError:
        raise AdapterError(f"cannot push adapter {name!r}: base snapshot {snap.url} has no {HF_CONFIG}, "
                           "so its architecture and hidden size are unknown") from None
    return hf_shape(raw, where=f"{snap.url}/{HF_CONFIG}")


def check_fit(shape: LoraShape, *, name: str, model: str, architecture: str, hidden_size: int) -> None:
    """At push: the adapter's tensors must have the base's hidden size."""
    if shape.hidden_size != hidden_size:
        raise AdapterBaseMismatch(f"adapter {name!r} (hidden {shape.hidden_size}) does not fit base {model!r} "
                                  f"({architecture}, hidden {hidden_size})")


def check_base(info: AdapterInfo, *, architecture: str, hidden_size: int, served_model: str,
               max_lora_rank: int | None = None) -> None:
    """Before an app loads `info`: its base must have the served model's architecture and hidden
    size, and its rank must not exceed the app's max_lora_rank (when given). The model names are
    only reported: an adapter of another store model with the same shape loads and is allowed."""
    b = info.base
    if (b.architecture, b.hidden_size) != (architecture, hidden_size):
        raise AdapterBaseMismatch(
            f"adapter {info.name!r} was trained for {b.base_model!r} ({b.architecture}, hidden {b.hidden_size}); "
            f"this app serves {served_model!r} ({architecture}, hidden {hidden_size})")
    if max_lora_rank is not None and b.rank > max_lora_rank:
        raise AdapterBaseMismatch(f"adapter {info.name!r} has rank {b.rank}, above max_lora_rank {max_lora_rank} "
                                  f"of the app serving {served_model!r}")
