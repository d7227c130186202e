"""Client keys and route limit overrides managed live through the admin API, kept on fsspec.

Layout under `key_store.url` (gateway.yaml):
  keys/<id>/<version>.json  one version of a client key: {id, version, sha256, routes, adapters?, limits,
                            budget, created_at, rotated_at}, or a tombstone {id, version, revoked: true};
                            `adapters` absent: every adapter (a record written before it existed too)
  keys/<id>.json            a key written before versions existed (read as version 0)
  routes/<alias>.json       a route's limits/budget override: {limits, budget, updated_at}
The secret itself is never stored: it is shown once by the create/rotate answer; only its SHA-256
digest lands here. Every replica polls the directory (`poll_interval_s`), so all replicas and
restarts see the same keys.

Why versions: every change (create, patch, rotate, revoke) creates version n+1 of the version n it
read, with an exclusive create (fsspec mode "xb": O_EXCL/link(2) on local disks, a conditional PUT
`If-None-Match: *` on S3, a lock on memory://). Of two edits based on the same version exactly one
lands; the other re-reads and retries. So a revoke's tombstone can never be overwritten by a
concurrent patch or rotate (the loser re-reads, finds the tombstone and answers 404), and of two
creates of one id one lands and the other is told the id exists. The newest version decides; a
tombstone is kept so that no stale edit can resurrect the key. No rename is needed, so the same
holds on S3.

A file that does not parse as a key record (truncated, a JSON list, a number for an id) is skipped
with a warning that names it: that key does not work, every other key does.

Pure apart from the fsspec calls of `KeyRecordStore` (blocking: callers run them in a thread); the
record logic has unit tests without Ray or a network.
"""
from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from gateway.config import KeyConfig
from gateway.costs.schema import BudgetSpec
from gateway.limits.schema import LimitSpec

log = logging.getLogger("thawline.gateway")

SECRET_PREFIX = "tl-"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key_id() -> str:
    return "k-" + secrets.token_hex(6)


def valid_id(key_id: object) -> bool:
    """Letters, digits, '.', '_', '-', at most 128, not starting with a dot: safe as one path
    segment of a URL and of the store (never '..', a '/', a NUL)."""
    return isinstance(key_id, str) and bool(_ID_RE.fullmatch(key_id))


ID_RULE = "key ids are letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit)"


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


_META = ("created_at", "rotated_at", "version")


def key_record(rec: KeyConfig, *, created_at: float | None = None, rotated_at: float | None = None) -> dict:
    out = rec.model_dump(mode="json", exclude_none=True)
    out["created_at"] = created_at if created_at is not None else time.time()
    if rotated_at is not None:
        out["rotated_at"] = rotated_at
    return out


def key_from_record(d: dict) -> KeyConfig:
    return KeyConfig.model_validate({k: v for k, v in d.items() if k not in _META})


def public_view(d: dict, source: str) -> dict:
    """What the list endpoint shows of a key: never the digest (it would allow offline guessing)."""
    return {"id": d["id"], "routes": d.get("routes", ["*"]), "adapters": d.get("adapters"), "limits": d.get("limits"),
            "budget": d.get("budget"), "created_at": d.get("created_at"), "rotated_at": d.get("rotated_at"),
            "source": source}


@dataclass(frozen=True, slots=True)
class StoredKeys:
    """What the store held at one read: key records by id and route overrides by alias."""
    keys: dict[str, dict]
    routes: dict[str, RouteOverride]

    def key_configs(self) -> list[KeyConfig]:
        # every record here passed key_from_record when it was read (KeyRecordStore.read_all)
        return [key_from_record(d) for d in self.keys.values()]




class KeyExists(Exception):
    """A create found a live key with that id (or lost the race to create it)."""


class KeyMissing(Exception):
    """No live key with that id (never created, or revoked)."""


class KeyConflict(Exception):
    """An edit kept losing races to other edits of the same key (retries exhausted)."""


_EDIT_TRIES = 32
_MALFORMED = object()     # a file that exists but is no key record


class KeyRecordStore:
    """Blocking fsspec access to the store (run in a thread from async code)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        import fsspec
        self.fs, self.root = fsspec.core.url_to_fs(url.rstrip("/"), **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self._warned: set[str] = set()

    # ---- files ---------------------------------------------------------------------------
    def _path(self, kind: str, name: str) -> str:
        return f"{self.root}/{kind}/{name}.json"

    def _version_path(self, key_id: str, version: int) -> str:
        return f"{self.root}/keys/{key_id}/{version:012d}.json"

    def _write(self, path: str, obj: dict) -> None:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as f:
            f.write(orjson.dumps(obj))

    def _warn(self, path: str, why: str) -> None:
        if path not in self._warned:      # once per file per process: the poller reads every second
            self._warned.add(path)
            log.warning("key store: skipping %s: %s", path, why)

    def _load(self, path: str, key_id: str | None = None):
        """The record at `path`; None when gone; _MALFORMED (warned) when it is no key record."""
        try:
            with self.fs.open(path, "rb") as f:
                d = orjson.loads(f.read())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError as e:
            # a store error (OSError) is not caught: the poller then keeps the keys it last read
            # rather than dropping a key for one failed read
            self._warn(path, f"not readable JSON ({e})")
            return _MALFORMED
        if not isinstance(d, dict) or (key_id is not None and d.get("id") != key_id):
            self._warn(path, f"not a key record for id {key_id!r}")
            return _MALFORMED
        if key_id is not None and not d.get("revoked"):
            try:
                key_from_record(d)
            except ValueError as e:
                self._warn(path, f"invalid key record: {str(e).splitlines()[0]}")
                return _MALFORMED
        return d

    def _create(self, path: str, obj: dict) -> None:
        from snapshots.fsutil import publish_exclusive
        publish_exclusive(self.fs, path, orjson.dumps(obj))    # FileExistsError when taken

    # ---- versions ------------------------------------------------------------------------
    def _latest(self, key_id: str) -> tuple[int, str | None]:
        """(newest version, its path); (0, legacy path or None) when the key has no versions."""
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache()
        try:
            names = self.fs.ls(f"{self.root}/keys/{key_id}", detail=False)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        versions = [int(n) for n in (str(p).rsplit("/", 1)[-1].removesuffix(".json") for p in names
                                     if str(p).endswith(".json")) if n.isdigit()]
        if versions:
            return max(versions), self._version_path(key_id, max(versions))
        legacy = self._path("keys", key_id)
        return 0, (legacy if self.fs.exists(legacy) else None)

    def _current(self, key_id: str) -> tuple[int, Any]:
        """(version, record | None when absent or revoked | _MALFORMED)."""
        version, path = self._latest(key_id)
        rec = self._load(path, key_id) if path is not None else None
        if isinstance(rec, dict) and rec.get("revoked"):
            rec = None
        return version, rec

    def _commit(self, key_id: str, version: int, obj: dict) -> bool:
        """Create version `version` of the key; False if another edit created it first."""
        try:
            self._create(self._version_path(key_id, version), {**obj, "id": key_id, "version": version})
        except FileExistsError:
            return False
        if version == 1:
            try:     # a pre-version file is superseded now; best effort (a leftover is ignored)
                self.fs.rm(self._path("keys", key_id))
            except (FileNotFoundError, OSError):
                pass
        return True

    # ---- keys ----------------------------------------------------------------------------
    def create_key(self, rec: dict) -> dict:
        """Store a new key; KeyExists if a live key (or a file that is no record) has the id, or
        if a concurrent create of the same id landed first."""
        version, cur = self._current(rec["id"])
        if cur is not None or not self._commit(rec["id"], version + 1, rec):
            raise KeyExists(rec["id"])
        return {**rec, "version": version + 1}

    def get_key(self, key_id: str) -> dict | None:
        """The live record, or None (never created, revoked, or not a valid record)."""
        rec = self._current(key_id)[1]
        return rec if isinstance(rec, dict) else None

    def update_key(self, key_id: str, change: Callable[[dict], dict]) -> dict:
        """Write `change(current record)` as the next version, conditional on nobody else having
        written one since the read: a lost race re-reads and applies `change` again. KeyMissing when
        the key is absent or revoked (also when a revoke won the race)."""
        for _ in range(_EDIT_TRIES):
            version, cur = self._current(key_id)
            if not isinstance(cur, dict):
                raise KeyMissing(key_id)
            new = change({k: v for k, v in cur.items() if k != "version"})
            if self._commit(key_id, version + 1, new):
                return {**new, "id": key_id, "version": version + 1}
        raise KeyConflict(key_id)

    def delete_key(self, key_id: str) -> bool:
        """Revoke: a tombstone as the next version. False when there was no live key. A key whose
        newest file is malformed is revoked too (it did not work; now it never will)."""
        for _ in range(_EDIT_TRIES):
            version, cur = self._current(key_id)
            if cur is None:
                return False
            if self._commit(key_id, version + 1, {"revoked": True, "revoked_at": time.time()}):
                return True
        raise KeyConflict(key_id)

    # routes
    def put_route(self, alias: str, ov: RouteOverride) -> None:
        self._write(self._path("routes", alias.replace("/", "%2F")), ov.to_json())

    # ---- polling -------------------------------------------------------------------------
    def _key_files(self) -> dict[str, tuple[int, str]]:
        """key id -> (newest version, its path), from one recursive listing."""
        prefix = f"{self.root}/keys/"
        try:
            paths = self.fs.find(prefix.rstrip("/"))
        except FileNotFoundError:
            return {}
        newest: dict[str, tuple[int, str]] = {}
        for p in map(str, paths):
            rel = p[len(prefix):] if p.startswith(prefix) else p.rsplit("/keys/", 1)[-1]
            parts = rel.removesuffix(".json").split("/")
            if not rel.endswith(".json") or len(parts) > 2 or not valid_id(parts[0]) or (
                    len(parts) == 2 and not parts[1].isdigit()):
                if not rel.split("/")[-1].startswith(".") and ".tmp-" not in rel:
                    self._warn(p, "not a key record file name")
                continue
            version = int(parts[1]) if len(parts) == 2 else 0
            if parts[0] not in newest or version > newest[parts[0]][0]:
                newest[parts[0]] = (version, p)
        return newest

    def read_all(self) -> StoredKeys:
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache()
        keys = {}
        for key_id, (_, path) in sorted(self._key_files().items()):
            d = self._load(path, key_id)
            if isinstance(d, dict) and not d.get("revoked"):
                keys[key_id] = d
        routes = {}
        for k, d in self._read_dir("routes").items():
            try:
                routes[k.replace("%2F", "/")] = RouteOverride.from_json(d)
            except (ValueError, TypeError, AttributeError, KeyError) as e:
                self._warn(f"{self.root}/routes/{k}.json", f"invalid route override: {e}")
        return StoredKeys(keys, routes)

    def _read_dir(self, kind: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        try:
            paths = self.fs.ls(f"{self.root}/{kind}", detail=False)
        except FileNotFoundError:
            return out
        for p in map(str, paths):
            if p.endswith(".json"):
                d = self._load(p)
                if isinstance(d, dict):
                    out[p.rsplit("/", 1)[-1][:-5]] = d
        return out
