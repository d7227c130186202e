"""Writing a snapshot: SnapshotWriter (claims the id, commits) and RankWriter (streams one rank).

Commit protocol (why a killed writer leaves nothing visible):
  1. claim   <model>/<id>/.claim by exclusive create: exactly one writer owns an id;
  2. each rank streams tensors into rank-<r>/part-<p>.bin and closes with a manifest fragment
     rank-<r>/manifest.parquet (possibly from another process: open_rank_writer);
  3. commit merges the fragments into manifest.parquet, then writes snapshot.json LAST.
Readers only ever look at ids that have snapshot.json; `gc` removes claimed-but-uncommitted dirs
whose heartbeat stopped. Claim, heartbeat and the commit/gc protocol: snapshots/writer_claim.py.
"""
from __future__ import annotations

import os
import time
from typing import Any

from . import fsutil, manifest
from .checksum import ALGORITHM, checksum
from .writer_claim import CLAIM, GC_MARK, HEARTBEAT, Heartbeat, claim, ensure_owned, lost_reason, read_claim  # noqa: F401 - claim/read_claim re-exported
from .errors import ClaimLost, RankOutOfRange, SnapshotCorrupt, SnapshotError, SnapshotIOError
from .format import (
    ALIGN,
    DEFAULT_PART_BYTES,
    FORMAT_VERSION,
    MANIFEST,
    SNAPSHOT_JSON,
    EngineInfo,
    PartInfo,
    RankInfo,
    SnapshotMeta,
    align_up,
    part_path,
    rank_fragment_path,
)
from .tensorbytes import as_bytes

_ZEROS = bytes(ALIGN)
_RESERVED = {CLAIM, HEARTBEAT, GC_MARK, SNAPSHOT_JSON, MANIFEST}


class RankWriter:
    """Streams one rank's tensors to its part files; holds at most one tensor's bytes at a time."""

    def __init__(self, fs, snap_path: str, rank: int, *, part_bytes: int = DEFAULT_PART_BYTES,
                 heartbeat: Heartbeat | None = None):
        self._fs = fs
        self._snap = snap_path
        self._heartbeat = heartbeat  # set when this rank writes from its own process (open_rank_writer)
        self.rank = rank
        self._part_bytes = part_bytes
        self._rows: list[manifest.ManifestRow] = []
        self._names: set[str] = set()
        self._part = -1
        self._file = None
        self._offset = 0
        self._closed = False
        self.bytes_written = 0

    def _part_file(self) -> str:
        return fsutil.join(self._snap, part_path(self.rank, self._part))

    def _io_error(self, exc: OSError) -> SnapshotIOError:
        # OSError from a buffered write names no file; a full disk must say which one.
        return SnapshotIOError(f"{self._part_file()}: write failed: {exc.strerror or exc}")

    def _open_part(self) -> None:
        self._close_part()
        self._part += 1
        path = self._part_file()
        try:
            if fsutil.is_local(self._fs):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self._file = open(path, "wb")
            else:
                self._file = self._fs.open(path, "wb")
        except OSError as exc:
            raise self._io_error(exc) from exc
        self._offset = 0

    def _close_part(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            try:
                if fsutil.is_local(self._fs):
                    f.flush()
                    os.fsync(f.fileno())
                f.close()
            except OSError as exc:
                raise self._io_error(exc) from exc

    def add(self, name: str, tensor) -> None:
        """Append one tensor (torch or numpy). Its bytes go to the current part at a 4 KiB aligned offset."""
        if self._closed:
            raise SnapshotError(f"rank {self.rank} writer is closed")
        if name in self._names:
            raise ValueError(f"rank {self.rank}: tensor {name!r} added twice")
        data, dtype, shape = as_bytes(tensor)
        nbytes = data.nbytes
        start = align_up(self._offset)
        # Roll to a new part when this tensor would cross the limit; a tensor larger than the limit
        # gets a part of its own (tensors are never split across parts).
        if self._file is None or (self._offset > 0 and start + nbytes > self._part_bytes):
            self._open_part()
            start = 0
        try:
            if start > self._offset:
                self._file.write(_ZEROS[: start - self._offset])
            self._file.write(data)
        except OSError as exc:
            raise self._io_error(exc) from exc
        self._offset = start + nbytes
        self.bytes_written += nbytes
        self._names.add(name)
        self._rows.append(
            manifest.ManifestRow(
                rank=self.rank,
                name=name,
                file=part_path(self.rank, self._part),
                offset=start,
                nbytes=nbytes,
                dtype=dtype,
                shape=shape,
                checksum=checksum(data),
            )
        )

    def close(self) -> None:
        """Finish the part files, then publish this rank's manifest fragment (read by commit)."""
        if self._closed:
            return
        try:
            self._close_part()
            fsutil.write_atomic(self._fs, fsutil.join(self._snap, rank_fragment_path(self.rank)), manifest.encode(self._rows))
        finally:
            self._stop_heartbeat()
        self._closed = True

    def abort(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
        except OSError:
            pass  # aborting anyway; the part file is a leftover for gc
        finally:
            self._stop_heartbeat()
        self._closed = True

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class SnapshotWriter:
    """Coordinator side of one snapshot. Construct through SnapshotStore.create_writer()."""

    def __init__(self, fs, snap_path: str, url: str, model: str, snapshot_id: str, *, tp_size: int, part_bytes: int,
                 claim_data: dict | None = None, heartbeat: bool = True):
        self._fs = fs
        self._snap = snap_path
        self.url = url
        self.model = model
        self.snapshot_id = snapshot_id
        self.tp_size = tp_size
        self.part_bytes = part_bytes
        self.committed = False
        self._claim = claim_data if claim_data is not None else read_claim(fs, snap_path)
        self._token = self._claim.get("token")
        # While this writer is open, its heartbeat tells gc it is alive however long it takes.
        self._heartbeat = Heartbeat(fs, snap_path, self._claim, owner=self).start() if heartbeat else None

    def rank_writer(self, rank: int, *, heartbeat: bool = False) -> RankWriter:
        """heartbeat=True: the rank writer beats on its own until closed (a TP worker process whose
        coordinator object is not kept, see SnapshotStore.open_rank_writer)."""
        if not 0 <= rank < self.tp_size:
            raise RankOutOfRange(rank, self.tp_size)
        hb = Heartbeat(self._fs, self._snap, self._claim).start() if heartbeat else None
        return RankWriter(self._fs, self._snap, rank, part_bytes=self.part_bytes, heartbeat=hb)

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def put_file(self, relpath: str, data: bytes) -> None:
        """Store an extra file (engine state, engine/hf/config.json, ...) inside the snapshot."""
        rel = relpath.strip("/")
        if not rel or any(c in ("", ".", "..") for c in rel.split("/")) or rel in _RESERVED or rel.startswith("rank-") \
                or ".tmp-" in rel:
            raise ValueError(f"invalid snapshot file path {relpath!r}")
        fsutil.write_atomic(self._fs, fsutil.join(self._snap, rel), data)

    def _extra_files(self) -> list[str]:
        prefix = self._snap.rstrip("/") + "/"
        out = []
        for p in self._fs.find(self._snap):
            rel = p[len(prefix):] if p.startswith(prefix) else p
            if rel in _RESERVED or rel.startswith("rank-") or ".tmp-" in rel:
                continue
            out.append(rel)
        return sorted(out)

    def commit(self, meta_fields: dict[str, Any] | None = None) -> SnapshotMeta:
        """Merge every rank's fragment into manifest.parquet, then write snapshot.json (the commit point).

        meta_fields: model_revision, dtype, pp_size, engine ({"name", "version"} or a name); any other
        key is kept under `extra`.
        """
        if self.committed:
            raise SnapshotError(f"snapshot {self.model}/{self.snapshot_id} is already committed")
        # Fail before touching anything if gc took the id meanwhile (see snapshots/writer_claim.py).
        ensure_owned(self._fs, self._snap, self._token, self.url)
        rows, ranks = self._closed_ranks()
        meta = self._meta(dict(meta_fields or {}), ranks)
        fsutil.write_atomic(self._fs, fsutil.join(self._snap, MANIFEST), manifest.encode(rows))
        for r in range(self.tp_size):
            self._fs.rm_file(fsutil.join(self._snap, rank_fragment_path(r)))
        self._publish(meta)
        self.committed = True
        self.stop_heartbeat()
        return meta

    def _closed_ranks(self) -> tuple[list[manifest.ManifestRow], list[RankInfo]]:
        """Every rank's manifest rows and RankInfo, read from the fragments the rank writers left
        on close; fails naming the ranks that never closed."""
        rows: list[manifest.ManifestRow] = []
        ranks: list[RankInfo] = []
        missing = []
        for r in range(self.tp_size):
            try:
                frag = self._fs.cat_file(fsutil.join(self._snap, rank_fragment_path(r)))
            except FileNotFoundError:
                missing.append(r)
                continue
            rrows = self._fragment_rows(r, frag)
            rows.extend(rrows)
            parts = self._rank_parts(r, rrows)
            ranks.append(RankInfo(rank=r, parts=parts, nbytes=sum(p.nbytes for p in parts),
                                  tensor_bytes=sum(x.nbytes for x in rrows), num_tensors=len(rrows)))
        if missing:
            raise SnapshotError(f"cannot commit {self.model}/{self.snapshot_id}: ranks {missing} were not closed")
        return rows, ranks

    def _fragment_rows(self, r: int, frag: bytes) -> list[manifest.ManifestRow]:
        """Rank r's fragment decoded; its rows may only name files under rank-r/."""
        where = f"{self.url}/{rank_fragment_path(r)}"
        try:
            rrows = manifest.decode(frag)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types; name the file
            raise SnapshotCorrupt(f"{where}: not a valid manifest fragment ({exc})", rank=r) from exc
        if any(row.rank != r or not row.file.startswith(f"rank-{r}/") or ".." in row.file.split("/") for row in rrows):
            raise SnapshotCorrupt(f"{where}: rows name another rank or a path outside rank-{r}/", rank=r)
        return rrows

    def _rank_parts(self, r: int, rrows: list[manifest.ManifestRow]) -> list[PartInfo]:
        """Rank r's part files in order, each checked to end exactly where its last tensor does."""
        ends: dict[str, int] = {}
        for row in rrows:
            ends[row.file] = max(ends.get(row.file, 0), row.offset + row.nbytes)
        parts = []
        for f in sorted(ends, key=lambda s: int(s.rsplit("-", 1)[1].split(".")[0])):
            size = self._fs.size(fsutil.join(self._snap, f))
            if size != ends[f]:
                raise SnapshotError(f"rank {r}: part {f} has {size} bytes, manifest expects {ends[f]}")
            parts.append(PartInfo(path=f, nbytes=size))
        return parts

    def _meta(self, fields: dict[str, Any], ranks: list[RankInfo]) -> SnapshotMeta:
        """snapshot.json's content: the known meta fields typed, any other key under `extra`."""
        engine = fields.pop("engine", {"name": "none"})
        if isinstance(engine, str):
            engine = {"name": engine, "version": fields.pop("engine_version", None)}
        known = {k: fields.pop(k) for k in ("model_revision", "dtype", "pp_size") if k in fields}
        return SnapshotMeta(
            format_version=FORMAT_VERSION,
            model=self.model,
            snapshot_id=self.snapshot_id,
            created_at=time.time(),
            tp_size=self.tp_size,
            engine=EngineInfo(**engine),
            checksum_algorithm=ALGORITHM,
            align=ALIGN,
            ranks=ranks,
            total_bytes=sum(r.nbytes for r in ranks),
            files=self._extra_files(),
            extra=fields,
            **known,
        )

    def _publish(self, meta: SnapshotMeta) -> None:
        """Write snapshot.json, then make sure the id is still ours; undo it if not."""
        # The commit point (c1): until this object exists no reader sees the snapshot. Exclusive,
        # so a writer that lost its id can never replace another writer's snapshot.json.
        meta_path = fsutil.join(self._snap, SNAPSHOT_JSON)
        try:
            fsutil.publish_exclusive(self._fs, meta_path, meta.model_dump_json(indent=2).encode())
        except FileExistsError:
            raise ClaimLost(f"{self.url}: {SNAPSHOT_JSON} already exists: another writer committed this id") from None
        # c2: gc may have marked the id between our first check and c1. Then gc may be deleting
        # it: uncommit and fail loudly rather than report a snapshot that is about to vanish.
        reason = lost_reason(self._fs, self._snap, self._token)
        if reason:
            try:
                self._fs.rm_file(meta_path)
            except FileNotFoundError:
                pass
            self.stop_heartbeat()
            raise ClaimLost(f"{self.url}: commit undone, this writer lost the snapshot: {reason}")

    def abort(self) -> None:
        """Remove everything written so far (claim included), freeing the id."""
        self.stop_heartbeat()
        if self.committed:
            return
        # Only while the id is still ours: after gc collected it another writer may own the dir.
        if lost_reason(self._fs, self._snap, self._token) is not None:
            return
        try:
            self._fs.rm(self._snap, recursive=True)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
