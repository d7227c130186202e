"""SnapshotStore: list / resolve / inspect / verify / delete / gc snapshots under one fsspec URL.

Store layout: <url>/<model>/<snapshot-id>/... (see format.py). Only ids with snapshot.json exist
for readers; `<model>/latest` resolves to the most recently committed one.

`load(ref)` resolves a reference and reads its snapshot.json once, as a ResolvedSnapshot; the
cache tier, restore and the vLLM start/loader take that object instead of re-reading the file.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from . import fsutil, manifest
from .writer_claim import CLAIM
from .errors import SnapshotCorrupt, SnapshotError, SnapshotNotFound
from .format import (
    DEFAULT_PART_BYTES,
    LATEST,
    MANIFEST,
    RESERVED_IDS,
    SNAPSHOT_JSON,
    SnapshotMeta,
    check_name,
    new_snapshot_id,
    parse_meta,
)
from .gc import collect
from .paths import safe_relpath
from .rankio import verify_rank
from .writer import RankWriter, SnapshotWriter, claim, read_claim

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotRef:
    model: str
    snapshot_id: str
    url: str  # full URL <store>/<model>/<id>
    path: str  # protocol-less path in the store's filesystem


@dataclass(frozen=True)
class ResolvedSnapshot:
    """A committed snapshot resolved and read once: its ref, the exact snapshot.json bytes, their
    parse. Resolve once per process (SnapshotStore.load) and hand this object on."""

    ref: SnapshotRef
    raw_meta: bytes  # the node cache ties its copy to these exact bytes (sha256)
    meta: SnapshotMeta

    @property
    def url(self) -> str:
        return self.ref.url


@dataclass(frozen=True)
class SnapshotInfo:
    model: str
    snapshot_id: str
    url: str
    created_at: float
    tp_size: int
    total_bytes: int
    engine: str
    error: str | None = None  # set when snapshot.json exists but cannot be read (e.g. newer format)


@dataclass
class VerifyReport:
    ref: SnapshotRef
    ranks: int = 0
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    per_rank: dict[int, int] = field(default_factory=dict)  # rank -> tensors checked


def split_snapshot_url(url: str) -> tuple[str, str]:
    """'<store>/<model>/<id-or-latest>' -> ('<store>', '<model>/<id>')."""
    trimmed = url.rstrip("/")
    parts = trimmed.rsplit("/", 2)
    if len(parts) != 3 or not parts[0] or parts[0].endswith(":/") or parts[0].endswith(":"):
        raise SnapshotError(f"not a snapshot URL (expected <store-url>/<model>/<id|latest>): {url}")
    check_name("model name", parts[1])
    if parts[2] != LATEST:
        check_name("snapshot id", parts[2])
    return parts[0], f"{parts[1]}/{parts[2]}"


class SnapshotStore:
    def __init__(self, url: str, storage_options: dict | None = None, *, allow_any_scheme: bool = False):
        """allow_any_scheme: accept fsspec schemes other than file/memory/s3/gs (see fsutil.check_scheme)."""
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}
        self.fs, self.root = fsutil.url_to_fs(self.url, self.storage_options, allow_any_scheme=allow_any_scheme)

    @classmethod
    def for_snapshot(cls, snapshot_url: str, storage_options: dict | None = None, *,
                     allow_any_scheme: bool = False) -> tuple["SnapshotStore", str]:
        """(store, '<model>/<id>') for a full snapshot URL."""
        fsutil.check_scheme(snapshot_url, allow_any_scheme)
        store_url, ref = split_snapshot_url(snapshot_url)
        return cls(store_url, storage_options, allow_any_scheme=allow_any_scheme), ref

    @property
    def is_local(self) -> bool:
        return fsutil.is_local(self.fs)

    # ---- paths -------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return fsutil.join(self.root, *parts)

    def _ref(self, model: str, snapshot_id: str) -> SnapshotRef:
        return SnapshotRef(model, snapshot_id, f"{self.url}/{model}/{snapshot_id}", self._path(model, snapshot_id))

    def _ls_dirs(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    # ---- reading -----------------------------------------------------------------------------
    def read_meta_raw(self, ref: SnapshotRef) -> bytes:
        try:
            return fsutil.cat_whole(self.fs, fsutil.join(ref.path, SNAPSHOT_JSON))
        except FileNotFoundError:
            raise SnapshotNotFound(f"no committed snapshot at {ref.url}") from None

    def _committed_ids(self, model: str) -> list[str]:
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache(self._path(model))
        ids = []
        for sid in self._ls_dirs(self._path(model)):
            if sid in RESERVED_IDS:  # <model>/adapters/ holds LoRA adapters, not a snapshot
                continue
            if fsutil.exists(self.fs, self._path(model, sid, SNAPSHOT_JSON)):
                ids.append(sid)
        return ids

    def resolve(self, ref: str) -> SnapshotRef:
        """'<model>/<id>' or '<model>/latest' -> a committed snapshot (SnapshotNotFound otherwise)."""
        r, raw = self._resolve(ref)
        if raw is None and not fsutil.exists(self.fs, fsutil.join(r.path, SNAPSHOT_JSON)):
            raise SnapshotNotFound(f"no committed snapshot at {r.url}")
        return r

    def load(self, ref: str | SnapshotRef) -> ResolvedSnapshot:
        """Resolve `ref` and read its snapshot.json, once: for `<model>/<id>` one read (a missing
        file is SnapshotNotFound), for `<model>/latest` the bytes read while choosing it."""
        r, raw = (ref, None) if isinstance(ref, SnapshotRef) else self._resolve(ref)
        if raw is None:
            raw = self.read_meta_raw(r)
        return ResolvedSnapshot(r, raw, parse_meta(raw, where=f"{r.url}/{SNAPSHOT_JSON}"))

    def ref(self, model: str, snapshot_id: str) -> SnapshotRef:
        """The ref of `<model>/<id>` in this store, without checking that it is committed."""
        return self._ref(check_name("model name", model), check_name("snapshot id", snapshot_id))

    def _resolve(self, ref: str) -> tuple[SnapshotRef, bytes | None]:
        """(ref, None) for '<model>/<id>' (not checked to exist); (newest committed ref, its
        snapshot.json bytes) for '<model>/latest'."""
        try:
            model, sid = ref.strip("/").split("/")
        except ValueError:
            raise SnapshotError(f"snapshot reference must be <model>/<id> or <model>/latest, got {ref!r}") from None
        check_name("model name", model)
        if sid != LATEST:
            check_name("snapshot id", sid)
            return self._ref(model, sid), None
        best = None
        for cand in self._committed_ids(model):
            r = self._ref(model, cand)
            try:
                raw = self.read_meta_raw(r)
            except SnapshotNotFound:
                continue
            created = self._created_at(r, raw)
            if created is None:
                continue
            key = (created, cand)
            if best is None or key > best[0]:
                best = (key, r, raw)
        if best is None:
            raise SnapshotNotFound(f"no committed snapshot of model {model!r} in {self.url}")
        return best[1], best[2]

    @staticmethod
    def _created_at(r: SnapshotRef, raw: bytes) -> float | None:
        """created_at of a committed snapshot, or None (with a warning naming the file) when its
        snapshot.json is malformed: one bad snapshot must not make `<model>/latest` unusable.
        The format version is not checked here: a newer-format snapshot is valid, and resolving to
        it lets the reader refuse it with UnsupportedFormatVersion."""
        where = f"{r.url}/{SNAPSHOT_JSON}"
        try:
            data = json.loads(raw)
        except ValueError as exc:
            log.warning("thawline: skipping %s for latest: not valid JSON (%s)", where, exc)
            return None
        created = data.get("created_at") if isinstance(data, dict) else None
        if not isinstance(created, (int, float)) or isinstance(created, bool) or not math.isfinite(created):
            log.warning("thawline: skipping %s for latest: %s", where,
                        "not a JSON object" if not isinstance(data, dict) else f"created_at is {created!r}, not a number")
            return None
        return float(created)

    def inspect(self, ref: str | SnapshotRef) -> SnapshotMeta:
        return self.load(ref).meta

    def read_manifest(self, ref: SnapshotRef, rank: int | None = None) -> list[manifest.ManifestRow]:
        path = fsutil.join(ref.path, MANIFEST)
        where = f"{ref.url}/{MANIFEST}"
        try:
            with self.fs.open(path, "rb") as f:
                rows = manifest.decode(f) if rank is None else manifest.read_rank(f, rank)
        except FileNotFoundError:
            raise SnapshotCorrupt(f"{ref.url}: {MANIFEST} is missing") from None
        except Exception as exc:  # noqa: BLE001 - pyarrow/parquet raise many types; name the file
            raise SnapshotCorrupt(f"{where}: not a valid manifest ({exc})") from exc
        for row in rows:  # restore and map_rank open these paths
            safe_relpath(row.file, where=where)
        return rows

    def list(self) -> list[SnapshotInfo]:
        """Committed snapshots only, sorted by model then creation time."""
        out = []
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache(self.root)
        for model in self._ls_dirs(self.root):
            for sid in self._committed_ids(model):
                r = self._ref(model, sid)
                try:
                    m = self.inspect(r)
                    out.append(SnapshotInfo(model, sid, r.url, m.created_at, m.tp_size, m.total_bytes, m.engine.name))
                except SnapshotError as exc:
                    out.append(SnapshotInfo(model, sid, r.url, 0.0, 0, 0, "?", error=str(exc)))
        return sorted(out, key=lambda i: (i.model, i.created_at, i.snapshot_id))

    def verify(self, ref: str | SnapshotRef, progress: Callable[[int], None] | None = None, *, threads: int | None = None) -> VerifyReport:
        """Re-hash every tensor of every rank; SnapshotCorrupt(rank=, tensor=) on the first mismatch."""
        snap = self.load(ref)
        r, meta = snap.ref, snap.meta
        report = VerifyReport(ref=r)
        t0 = time.perf_counter()
        for rank in range(meta.tp_size):
            rows = self.read_manifest(r, rank)
            info = meta.rank_info(rank)
            if len(rows) != info.num_tensors:
                raise SnapshotCorrupt(
                    f"rank {rank}: manifest has {len(rows)} tensors, snapshot.json says {info.num_tensors}", rank=rank
                )
            nbytes = verify_rank(self.fs, r.path, rank, rows, info, threads=threads, progress=progress)
            report.ranks += 1
            report.tensors += len(rows)
            report.bytes += nbytes
            report.per_rank[rank] = len(rows)
        report.seconds = time.perf_counter() - t0
        return report

    # ---- writing -----------------------------------------------------------------------------
    def create_writer(
        self,
        model: str,
        snapshot_id: str | None = None,
        *,
        tp_size: int,
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> SnapshotWriter:
        """Claim <model>/<id> exclusively (SnapshotExists if taken) and return its writer."""
        check_name("model name", model)
        sid = check_name("snapshot id", snapshot_id) if snapshot_id else new_snapshot_id()
        if tp_size < 1:
            raise ValueError(f"tp_size must be >= 1, got {tp_size}")
        if part_bytes < 4096:
            raise ValueError(f"part_bytes must be >= 4096, got {part_bytes}")
        r = self._ref(model, sid)
        c = claim(self.fs, r.path, model, sid, tp_size, part_bytes)
        return SnapshotWriter(self.fs, r.path, r.url, model, sid, tp_size=tp_size, part_bytes=part_bytes, claim_data=c)

    def open_writer(self, model: str, snapshot_id: str, *, heartbeat: bool = True) -> SnapshotWriter:
        """Re-open the coordinator side of an id claimed earlier (e.g. in another process)."""
        r = self._ref(check_name("model name", model), check_name("snapshot id", snapshot_id))
        c = read_claim(self.fs, r.path)
        if fsutil.exists(self.fs, fsutil.join(r.path, SNAPSHOT_JSON)):
            raise SnapshotError(f"snapshot {model}/{snapshot_id} is already committed")
        return SnapshotWriter(self.fs, r.path, r.url, model, snapshot_id, tp_size=c["tp_size"], part_bytes=c["part_bytes"],
                              claim_data=c, heartbeat=heartbeat)

    def open_rank_writer(self, model: str, snapshot_id: str, rank: int) -> RankWriter:
        """For a TP worker in another process, after create_writer() claimed the id. The rank
        writer heartbeats the claim itself until it is closed."""
        return self.open_writer(model, snapshot_id, heartbeat=False).rank_writer(rank, heartbeat=True)

    # ---- removing ----------------------------------------------------------------------------
    def delete(self, ref: str | SnapshotRef) -> SnapshotRef:
        """Uncommit first (snapshot.json), so readers stop seeing it before the bytes go.

        The claim goes last: a delete interrupted halfway leaves a claimed, uncommitted dir,
        which gc recognises and finishes (gc never removes a dir without a claim).
        """
        r = ref if isinstance(ref, SnapshotRef) else self.resolve(ref)
        self.fs.rm_file(fsutil.join(r.path, SNAPSHOT_JSON))
        claim_path = fsutil.join(r.path, CLAIM)
        for p in sorted(self.fs.find(r.path)):
            if p.rstrip("/") != claim_path:
                self.fs.rm_file(p)
        try:
            self.fs.rm_file(claim_path)
        except FileNotFoundError:
            pass
        try:
            self.fs.rm(r.path, recursive=True)  # empty dirs left behind on file:// and memory://
        except (FileNotFoundError, OSError):
            pass
        return r

    def gc(self, older_than_s: float = 3600.0, *, dry_run: bool = False) -> list[str]:
        """Remove uncommitted snapshot dirs of writers whose heartbeat stopped more than
        `older_than_s` ago; returns their URLs. Only dirs proven to be ours are touched
        (snapshots/gc.py): a recognised claim, no snapshot.json, no unrecognised file.
        dry_run: only return what would be removed now.
        """
        return collect(self, older_than_s, dry_run=dry_run)
