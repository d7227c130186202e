"""Client keys and route limit overrides managed live through the admin API, kept on fsspec.

Layout under `key_store.url` (gateway.yaml):
  keys/<id>.json     one client key: {id, sha256, routes, limits, budget, created_at, rotated_at}
  routes/<alias>.json  a route's limits/budget override: {limits, budget, updated_at}
The secret itself is never stored: it is shown once by the create/rotate answer; only its SHA-256
digest lands here. Revoking deletes the key's file. Every replica polls the directory
(`poll_interval_s`), so all replicas and restarts see the same keys.

Pure apart from the fsspec calls of `KeyRecordStore` (blocking: callers run them in a thread); the
record logic has unit tests without Ray or a network.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import KeyConfig
from gateway.costs.schema import BudgetSpec
from gateway.limits.schema import LimitSpec

SECRET_PREFIX = "tl-"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key_id() -> str:
    return "k-" + secrets.token_hex(6)


def valid_id(key_id: str) -> bool:
    return bool(_ID_RE.fullmatch(key_id))


@dataclass(frozen=True, slots=True)
class RouteOverride:
    limits: LimitSpec | None = None
    budget: BudgetSpec | None = None

    def to_json(self) -> dict:
        return {"limits": self.limits.model_dump(exclude_none=True) if self.limits else None,
                "budget": self.budget.model_dump(exclude_none=True) if self.budget else None,
                "updated_at": time.time()}

    @classmethod
    def from_json(cls, d: dict) -> "RouteOverride":
        return cls(limits=LimitSpec.model_validate(d["limits"]) if d.get("limits") else None,
                   budget=BudgetSpec.model_validate(d["budget"]) if d.get("budget") else None)


def key_record(rec: KeyConfig, *, created_at: float | None = None, rotated_at: float | None = None) -> dict:
    out = rec.model_dump(mode="json", exclude_none=True)
    out["created_at"] = created_at if created_at is not None else time.time()
    if rotated_at is not None:
        out["rotated_at"] = rotated_at
    return out


def key_from_record(d: dict) -> KeyConfig:
    return KeyConfig.model_validate({k: v for k, v in d.items() if k not in ("created_at", "rotated_at")})


def public_view(d: dict, source: str) -> dict:
    """What the list endpoint shows of a key: never the digest (it would allow offline guessing)."""
    return {"id": d["id"], "routes": d.get("routes", ["*"]), "limits": d.get("limits"), "budget": d.get("budget"),
            "created_at": d.get("created_at"), "rotated_at": d.get("rotated_at"), "source": source}


@dataclass(frozen=True, slots=True)
class StoredKeys:
    """What the store held at one read: key records by id and route overrides by alias."""
    keys: dict[str, dict]
    routes: dict[str, RouteOverride]

    def key_configs(self) -> list[KeyConfig]:
        out = []
        for d in self.keys.values():
            try:
                out.append(key_from_record(d))
            except ValueError:
                continue   # a hand-edited bad file must not take every key down
        return out


class KeyRecordStore:
    """Blocking fsspec access to the store (run in a thread from async code)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        import fsspec
        self.fs, self.root = fsspec.core.url_to_fs(url.rstrip("/"), **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def _path(self, kind: str, name: str) -> str:
        return f"{self.root}/{kind}/{name}.json"

    def _write(self, path: str, obj: dict) -> None:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as f:
            f.write(orjson.dumps(obj))

    def _read_dir(self, kind: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        try:
            paths = self.fs.ls(f"{self.root}/{kind}", detail=False)
        except FileNotFoundError:
            return out
        for p in paths:
            if not str(p).endswith(".json"):
                continue
            try:
                with self.fs.open(p, "rb") as f:
                    out[str(p).rsplit("/", 1)[-1][:-5]] = orjson.loads(f.read())
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue   # deleted (revoked) or half-written since the listing
        return out

    # keys
    def put_key(self, rec: dict) -> None:
        self._write(self._path("keys", rec["id"]), rec)

    def get_key(self, key_id: str) -> dict | None:
        try:
            with self.fs.open(self._path("keys", key_id), "rb") as f:
                return orjson.loads(f.read())
        except FileNotFoundError:
            return None

    def delete_key(self, key_id: str) -> bool:
        p = self._path("keys", key_id)
        if not self.fs.exists(p):
            return False
        self.fs.rm(p)
        return True

    # routes
    def put_route(self, alias: str, ov: RouteOverride) -> None:
        self._write(self._path("routes", alias.replace("/", "%2F")), ov.to_json())

    def read_all(self) -> StoredKeys:
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache()
        keys = {d.get("id", k): d for k, d in self._read_dir("keys").items()}
        routes = {}
        for k, d in self._read_dir("routes").items():
            try:
                routes[k.replace("%2F", "/")] = RouteOverride.from_json(d)
            except ValueError:
                continue
        return StoredKeys(keys, routes)
