"""Writing a snapshot: SnapshotWriter (claims the id, commits) and RankWriter (streams one rank).

Commit protocol (why a killed writer leaves nothing visible):
  1. claim   <model>/<id>/.claim by exclusive create: exactly one writer owns an id;
  2. each rank streams tensors into rank-<r>/part-<p>.bin and closes with a manifest fragment
     rank-<r>/manifest.parquet (possibly from another process: open_rank_writer);
  3. commit merges the fragments into manifest.parquet, then writes snapshot.json LAST.
Readers only ever look at ids that have snapshot.json; `gc` removes claimed-but-uncommitted dirs.
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from . import fsutil, manifest
from .checksum import ALGORITHM, checksum
from .errors import RankOutOfRange, SnapshotError, SnapshotExists
from .format import (
    ALIGN,
    CLAIM,
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
_RESERVED = {CLAIM, SNAPSHOT_JSON, MANIFEST}


class RankWriter:
    """Streams one rank's tensors to its part files; holds at most one tensor's bytes at a time."""

    def __init__(self, fs, snap_path: str, rank: int, *, part_bytes: int = DEFAULT_PART_BYTES):
        self._fs = fs
        self._snap = snap_path
        self.rank = rank
        self._part_bytes = part_bytes
        self._rows: list[manifest.ManifestRow] = []
        self._names: set[str] = set()
        self._part = -1
        self._file = None
        self._offset = 0
        self._closed = False
        self.bytes_written = 0

    def _open_part(self) -> None:
        self._close_part()
        self._part += 1
        path = fsutil.join(self._snap, part_path(self.rank, self._part))
        if fsutil.is_local(self._fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._file = open(path, "wb")
        else:
            self._file = self._fs.open(path, "wb")
        self._offset = 0

    def _close_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

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
        if start > self._offset:
            self._file.write(_ZEROS[: start - self._offset])
        self._file.write(data)
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
        self._close_part()
        fsutil.write_atomic(self._fs, fsutil.join(self._snap, rank_fragment_path(self.rank)), manifest.encode(self._rows))
        self._closed = True

    def abort(self) -> None:
        self._close_part()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _claim_body(model: str, snapshot_id: str, tp_size: int, part_bytes: int) -> bytes:
    return json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "model": model,
            "snapshot_id": snapshot_id,
            "tp_size": tp_size,
            "part_bytes": part_bytes,
            "claimed_at": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
    ).encode()


def claim(fs, snap_path: str, model: str, snapshot_id: str, tp_size: int, part_bytes: int) -> dict:
    """Exclusive create of the claim object; SnapshotExists if anyone claimed or committed the id."""
    body = _claim_body(model, snapshot_id, tp_size, part_bytes)
    try:
        fsutil.create_exclusive(fs, fsutil.join(snap_path, CLAIM), body)
    except FileExistsError:
        raise SnapshotExists(f"snapshot {model}/{snapshot_id} already exists or is being written by another writer") from None
    return json.loads(body)


def read_claim(fs, snap_path: str) -> dict:
    try:
        return json.loads(fs.cat_file(fsutil.join(snap_path, CLAIM)))
    except FileNotFoundError:
        raise SnapshotError(f"no writer claimed {snap_path} (call create_writer first)") from None


class SnapshotWriter:
    """Coordinator side of one snapshot. Construct through SnapshotStore.create_writer()."""

    def __init__(self, fs, snap_path: str, url: str, model: str, snapshot_id: str, *, tp_size: int, part_bytes: int):
        self._fs = fs
        self._snap = snap_path
        self.url = url
        self.model = model
        self.snapshot_id = snapshot_id
        self.tp_size = tp_size
        self.part_bytes = part_bytes
        self.committed = False

    def rank_writer(self, rank: int) -> RankWriter:
        if not 0 <= rank < self.tp_size:
            raise RankOutOfRange(rank, self.tp_size)
        return RankWriter(self._fs, self._snap, rank, part_bytes=self.part_bytes)

    def put_file(self, relpath: str, data: bytes) -> None:
        """Store an extra file (engine state, engine/hf/config.json, ...) inside the snapshot."""
        rel = relpath.strip("/")
        if not rel or ".." in rel.split("/") or rel in _RESERVED or rel.startswith("rank-"):
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
        fields = dict(meta_fields or {})
        rows: list[manifest.ManifestRow] = []
        ranks: list[RankInfo] = []
        missing = []
        for r in range(self.tp_size):
            try:
                frag = self._fs.cat_file(fsutil.join(self._snap, rank_fragment_path(r)))
            except FileNotFoundError:
                missing.append(r)
                continue
            rrows = manifest.decode(frag)
            rows.extend(rrows)
            ends: dict[str, int] = {}
            for row in rrows:
                ends[row.file] = max(ends.get(row.file, 0), row.offset + row.nbytes)
            parts = []
            for f in sorted(ends, key=lambda s: int(s.rsplit("-", 1)[1].split(".")[0])):
                size = self._fs.size(fsutil.join(self._snap, f))
                if size != ends[f]:
                    raise SnapshotError(f"rank {r}: part {f} has {size} bytes, manifest expects {ends[f]}")
                parts.append(PartInfo(path=f, nbytes=size))
            ranks.append(
                RankInfo(
                    rank=r,
                    parts=parts,
                    nbytes=sum(p.nbytes for p in parts),
                    tensor_bytes=sum(x.nbytes for x in rrows),
                    num_tensors=len(rrows),
                )
            )
        if missing:
            raise SnapshotError(f"cannot commit {self.model}/{self.snapshot_id}: ranks {missing} were not closed")
        engine = fields.pop("engine", {"name": "none"})
        if isinstance(engine, str):
            engine = {"name": engine, "version": fields.pop("engine_version", None)}
        known = {k: fields.pop(k) for k in ("model_revision", "dtype", "pp_size") if k in fields}
        meta = SnapshotMeta(
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
        fsutil.write_atomic(self._fs, fsutil.join(self._snap, MANIFEST), manifest.encode(rows))
        for r in range(self.tp_size):
            self._fs.rm_file(fsutil.join(self._snap, rank_fragment_path(r)))
        # The commit point: until this object exists no reader sees the snapshot.
        fsutil.write_atomic(self._fs, fsutil.join(self._snap, SNAPSHOT_JSON), meta.model_dump_json(indent=2).encode())
        self.committed = True
        return meta

    def abort(self) -> None:
        """Remove everything written so far (claim included), freeing the id."""
        if self.committed:
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
