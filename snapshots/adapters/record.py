"""adapter.json: the commit marker of one adapter, and the AdapterInfo / AdapterBase read from it.

    {"format_version": 1, "name", "model", "push_id", "created_at", "checksum_algorithm": "xxh3_64",
     "files": {"adapter_config.json": {"nbytes", "checksum"}, "adapter_model.safetensors": {...}},
     "base": {"architecture", "hidden_size", "target_modules", "rank", "lora_alpha", "base_model"}}

JSON with sorted keys; checksums as 16 hex digits (an unsigned 64-bit int does not survive every
JSON reader). Read back from a shared store, so it is untrusted: the push id and file names are
joined onto paths, and are checked here before anyone does.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, Field

from snapshots.checksum import ALGORITHM

from .errors import AdapterCorrupt, AdapterError, json_object
from .layout import ADAPTER_FILES, FORMAT_VERSION, is_push_id


@dataclass(frozen=True)
class AdapterBase:
    """What the adapter was trained for: its base's shape and its own LoRA shape."""

    architecture: str
    hidden_size: int
    target_modules: tuple[str, ...]
    rank: int
    lora_alpha: float
    base_model: str  # the store's model name the adapter was pushed for

    def to_dict(self) -> dict:
        return {**asdict(self), "target_modules": list(self.target_modules)}


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    model: str
    url: str  # <store>/<model>/adapters/<name>
    push_id: str
    created_at: float
    nbytes: int
    base: AdapterBase
    files: dict  # relname -> {"nbytes": int, "checksum": 16 hex digits (xxh3_64)}

    def to_dict(self) -> dict:
        return {"name": self.name, "model": self.model, "url": self.url, "push_id": self.push_id,
                "created_at": self.created_at, "nbytes": self.nbytes, "base": self.base.to_dict(),
                "files": {k: dict(v) for k, v in self.files.items()}}


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    nbytes: int = Field(ge=0)
    checksum: str = Field(pattern=r"^[0-9a-f]{16}$")


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    architecture: str
    hidden_size: int = Field(gt=0)
    target_modules: list[str]
    rank: int = Field(gt=0)
    lora_alpha: float
    base_model: str


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format_version: int
    name: str
    model: str
    push_id: str
    created_at: float
    checksum_algorithm: str
    files: dict[str, _File]
    base: _Base


def encode(info: AdapterInfo) -> bytes:
    """adapter.json's bytes for `info`."""
    data = {"format_version": FORMAT_VERSION, "name": info.name, "model": info.model, "push_id": info.push_id,
            "created_at": info.created_at, "checksum_algorithm": ALGORITHM, "files": info.files,
            "base": info.base.to_dict()}
    return (json.dumps(data, sort_keys=True, indent=2) + "\n").encode()


def decode(raw: bytes, *, url: str, model: str, name: str) -> AdapterInfo:
    """Parse and check adapter.json read from `url` (<store>/<model>/adapters/<name>)."""
    where = f"adapter {name!r} of {model!r}: {url}/adapter.json"
    data = json_object(raw, where, AdapterCorrupt)
    if data.get("format_version") != FORMAT_VERSION:
        raise AdapterError(f"{where}: unsupported adapter format version {data.get('format_version')!r} "
                           f"(this thawline reads version {FORMAT_VERSION})")
    try:
        rec = _Record.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError: keep it to one line
        raise AdapterCorrupt(f"{where}: invalid ({' '.join(str(exc).splitlines()[:3])})") from None
    problem = None
    if (rec.model, rec.name) != (model, name):
        problem = f"it describes {rec.name!r} of {rec.model!r}"
    elif not is_push_id(rec.push_id):
        problem = f"push_id {rec.push_id!r} is not a push id"
    elif sorted(rec.files) != sorted(ADAPTER_FILES):
        problem = f"files are {sorted(rec.files)}, expected {list(ADAPTER_FILES)}"
    elif rec.checksum_algorithm != ALGORITHM:
        problem = f"checksum algorithm {rec.checksum_algorithm!r} is not {ALGORITHM}"
    if problem:
        raise AdapterCorrupt(f"{where}: {problem}")
    b = rec.base
    base = AdapterBase(b.architecture, b.hidden_size, tuple(b.target_modules), b.rank, b.lora_alpha, b.base_model)
    files = {k: v.model_dump() for k, v in sorted(rec.files.items())}
    return AdapterInfo(name=name, model=model, url=url, push_id=rec.push_id, created_at=rec.created_at,
                       nbytes=sum(f["nbytes"] for f in files.values()), base=base, files=files)
