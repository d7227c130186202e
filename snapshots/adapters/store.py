"""AdapterStore: push / list / names / get / rm / fetch LoRA adapters next to a model's snapshots.

Same fsspec store and URL as the snapshots (file://, memory://, s3://, gs://); layout in
layout.py. Commit protocol, as for snapshots: the files first, under a fresh push id, then
adapter.json by exclusive create (fsutil.publish_exclusive). Readers only see names whose
adapter.json exists, so a push that dies is invisible; the loser of two racing pushes of one
name gets AdapterExists and removes its own push dir. `rm` removes adapter.json first.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from snapshots import fsutil
from snapshots.format import check_name
from snapshots.store import SnapshotStore

from .base import base_shape, check_fit
from .errors import AdapterError, AdapterExists, AdapterNotFound
from .fetch import fetch_to_cache
from .gc import collect
from .layout import ADAPTER_FILES, ADAPTER_JSON, adapter_rel, adapters_rel, check_adapter_name, new_push_id
from .peft import read_adapter_dir
from .record import AdapterBase, AdapterInfo, decode, encode
from .transfer import upload

log = logging.getLogger(__name__)
READ_THREADS = 16  # adapter.json reads in flight while listing (a router may hold 1,000 adapters)


class AdapterStore:
    def __init__(self, store_url: str, storage_options: dict | None = None, *, allow_any_scheme: bool = False):
        self.url = store_url.rstrip("/")
        self.storage_options = storage_options or {}
        self.snapshots = SnapshotStore(self.url, self.storage_options, allow_any_scheme=allow_any_scheme)
        self.fs, self.root = self.snapshots.fs, self.snapshots.root

    # ---- paths -------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return fsutil.join(self.root, *parts)

    def adapter_url(self, model: str, name: str) -> str:
        return f"{self.url}/{adapter_rel(model, name)}"

    def _where(self, model: str, name: str) -> str:
        return f"adapter {name!r} of {model!r} in {self.url}"

    # ---- writing -----------------------------------------------------------------------------
    def push(self, src_dir, *, model: str, name: str, progress: Callable[[int], None] | None = None) -> AdapterInfo:
        """Check `src_dir` (a PEFT LoRA dir) against `model`'s latest snapshot, upload it, commit.

        Refused before anything is written: a bad name, a dir that is no LoRA adapter, a base with
        no snapshot in this store, a hidden size the base does not have (AdapterBaseMismatch), a
        name already committed (AdapterExists). progress(n): bytes uploaded.
        """
        check_name("model name", model)
        check_adapter_name(name)
        shape = read_adapter_dir(src_dir, name=name)
        architecture, hidden = base_shape(self.snapshots, model, name=name)
        check_fit(shape, name=name, model=model, architecture=architecture, hidden_size=hidden)
        if fsutil.exists(self.fs, self._path(adapter_rel(model, name), ADAPTER_JSON)):
            raise self._exists(model, name)
        push_id = new_push_id()
        push_dir = self._path(adapter_rel(model, name), push_id)
        committed = False
        try:
            files = {rel: upload(self.fs, Path(src_dir) / rel, fsutil.join(push_dir, rel), progress)
                     for rel in ADAPTER_FILES}
            info = AdapterInfo(name=name, model=model, url=self.adapter_url(model, name), push_id=push_id,
                               created_at=time.time(), nbytes=sum(f["nbytes"] for f in files.values()),
                               base=AdapterBase(architecture, hidden, shape.target_modules, shape.rank,
                                                shape.lora_alpha, model),
                               files=files)
            self._commit(info)
            committed = True
        finally:
            if not committed:
                self._remove_dir(push_dir)  # nothing of a failed or losing push stays behind
        return info

    def _commit(self, info: AdapterInfo) -> None:
        """The commit point: adapter.json, by exclusive create; AdapterExists if a push won."""
        try:
            fsutil.publish_exclusive(self.fs, self._path(adapter_rel(info.model, info.name), ADAPTER_JSON),
                                     encode(info))
        except FileExistsError:
            raise self._exists(info.model, info.name) from None
        # A push stalled past the gc threshold may have lost its files to `adapter gc` (gc.py):
        # then this adapter.json names nothing, and it is taken back.
        push_dir = self._path(adapter_rel(info.model, info.name), info.push_id)
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache(push_dir)
        there = {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.find(push_dir)}
        if not set(ADAPTER_FILES) <= there:
            self.fs.rm_file(self._path(adapter_rel(info.model, info.name), ADAPTER_JSON))
            raise AdapterError(f"{self._where(info.model, info.name)}: push {info.push_id} lost its files "
                               "before its commit (collected by `thawline adapter gc` while stalled); push again")

    def _exists(self, model: str, name: str) -> AdapterExists:
        return AdapterExists(f"{self._where(model, name)} already exists "
                             f"(remove it first: thawline adapter rm {name} --base {model} --store {self.url})")

    def rm(self, model: str, name: str) -> AdapterInfo:
        """Uncommit (adapter.json goes first: invisible at once), then remove the pushed files."""
        info = self.get(model, name)
        try:
            self.fs.rm_file(self._path(adapter_rel(model, name), ADAPTER_JSON))
        except FileNotFoundError:
            raise AdapterNotFound(f"no {self._where(model, name)} (removed meanwhile)") from None
        self._remove_dir(self._path(adapter_rel(model, name), info.push_id))
        return info

    def _remove_dir(self, path: str) -> None:
        """Best effort: the files under `path`, then the empty dirs file:// and memory:// keep."""
        try:
            for p in sorted(self.fs.find(path)):
                try:
                    self.fs.rm_file(p)
                except FileNotFoundError:
                    pass
        except FileNotFoundError:
            pass
        if fsutil.protocol_of(self.fs) in ("file", "local", "memory"):
            for d in (path, path.rsplit("/", 1)[0]):  # the push dir, then the name's dir if now empty
                try:
                    self.fs.rmdir(d)
                except (OSError, FileNotFoundError):
                    pass

    # ---- reading -----------------------------------------------------------------------------
    def get(self, model: str, name: str) -> AdapterInfo:
        """The committed adapter; AdapterNotFound when there is none (or only a half-written push)."""
        check_name("model name", model)
        check_adapter_name(name)
        try:
            raw = fsutil.cat_whole(self.fs, self._path(adapter_rel(model, name), ADAPTER_JSON))
        except FileNotFoundError:
            raise AdapterNotFound(f"no {self._where(model, name)}") from None
        return decode(raw, url=self.adapter_url(model, name), model=model, name=name)

    def warm(self, model: str) -> None:
        """Open the store's client and a connection before the first fetch needs them (on S3 the
        client's start adds about 150 ms to the first adapter's load otherwise): one existence
        check of the model's adapters dir."""
        check_name("model name", model)
        fsutil.exists(self.fs, self._path(adapters_rel(model)))

    def names(self, model: str) -> list[str]:
        """Committed adapter names of `model`, sorted: one recursive listing, no file read (on
        S3 one paginated LIST of <model>/adapters/), for a router's periodic refresh."""
        check_name("model name", model)
        base = self._path(adapters_rel(model))
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        prefix = base.rstrip("/") + "/"
        out = set()
        for p in found:
            rel = p.rstrip("/")[len(prefix):] if p.startswith(prefix) else ""
            name, _, rest = rel.partition("/")
            if rest == ADAPTER_JSON and _valid(name):
                out.add(name)
        return sorted(out)

    def models(self) -> list[str]:
        """Model names in the store (those with snapshots, adapters or both)."""
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache(self.root)
        return [m for m in self.snapshots._ls_dirs(self.root) if _valid(m, "model name")]

    def list(self, model: str | None = None) -> list[AdapterInfo]:
        """Committed adapters of `model` (every model when None), sorted by model then name. An
        adapter.json that cannot be read is skipped with a warning naming it."""
        pairs = [(m, n) for m in ([check_name("model name", model)] if model else self.models())
                 for n in self.names(m)]
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            found = list(pool.map(lambda mn: self._get_or_none(*mn), pairs))
        return [info for info in found if info is not None]

    def _get_or_none(self, model: str, name: str) -> AdapterInfo | None:
        try:
            return self.get(model, name)
        except AdapterNotFound:
            return None  # removed since the listing
        except AdapterError as exc:
            log.warning("thawline: skipping %s: %s", self.adapter_url(model, name), exc)
            return None

    def fetch(self, model: str, name: str, cache_root, *,
              progress: Callable[[int], None] | None = None) -> tuple[AdapterInfo, Path]:
        """(info, local dir) of a verified copy in the node cache (snapshots/adapters/fetch.py)."""
        info = self.get(model, name)
        return info, fetch_to_cache(self, info, cache_root, progress=progress)

    def gc(self, older_than_s: float = 3600.0, *, dry_run: bool = False) -> list[str]:
        """Remove push dirs of pushes that died (snapshots/adapters/gc.py); their URLs."""
        return collect(self, older_than_s, dry_run=dry_run)


def _valid(name: str, kind: str = "adapter name") -> bool:
    try:
        check_adapter_name(name) if kind == "adapter name" else check_name(kind, name)
        return True
    except ValueError:
        return False
