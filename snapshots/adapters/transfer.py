"""Moving one adapter file between a local dir and a store, hashing it on the way.

Both directions stream in chunks (an adapter of a large model is hundreds of MB), so the file is
never held whole; the xxh3_64 of the bytes that went through is returned (upload) or compared
with adapter.json's (download, by the caller).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from snapshots import fsutil
from snapshots.checksum import hasher, hex64
from snapshots.errors import SnapshotIOError

CHUNK = 8 << 20


def _copy(src_file, out_file, h, progress) -> int:
    """Stream `src_file` into `out_file` in CHUNKs, hashing into `h`; the bytes copied."""
    n = 0
    while chunk := src_file.read(CHUNK):
        h.update(chunk)
        out_file.write(chunk)
        n += len(chunk)
        if progress:
            progress(len(chunk))
    return n


def upload(fs, src: Path, dst: str, progress: Callable[[int], None] | None = None) -> dict:
    """Copy local `src` to `dst` on the store; {"nbytes", "checksum"} of what was written."""
    h = hasher()
    try:
        if fsutil.is_local(fs):
            os.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            out = open(dst, "wb")
        else:
            out = fs.open(dst, "wb")
        with open(src, "rb") as f, out:
            n = _copy(f, out, h, progress)
            if fsutil.is_local(fs):
                out.flush()
                os.fsync(out.fileno())
    except OSError as exc:
        raise SnapshotIOError(f"{dst}: write failed: {exc.strerror or exc}") from exc
    stored = fs.size(dst)
    if stored != n:
        raise SnapshotIOError(f"{dst}: {stored} bytes on the store after upload, expected {n}")
    return {"nbytes": n, "checksum": hex64(h.intdigest())}


def download(fs, src: str, dst: Path, progress: Callable[[int], None] | None = None) -> dict:
    """Copy `src` from the store to local `dst` (fsynced); {"nbytes", "checksum"} of what was read."""
    h = hasher()
    try:
        with fs.open(src, "rb") as f, open(dst, "wb") as out:
            n = _copy(f, out, h, progress)
            out.flush()
            os.fsync(out.fileno())
    except FileNotFoundError:
        raise  # the caller names the adapter and the missing file
    except OSError as exc:
        raise SnapshotIOError(f"{dst}: write failed: {exc.strerror or exc}") from exc
    return {"nbytes": n, "checksum": hex64(h.intdigest())}


def write_checked(data, dst: Path, progress: Callable[[int], None] | None = None) -> dict:
    """Write bytes read whole from the store (or raise the error that read gave) to local `dst`,
    fsynced; {"nbytes", "checksum"} as `download` returns."""
    if isinstance(data, BaseException):
        if isinstance(data, FileNotFoundError):
            raise data
        raise SnapshotIOError(f"{dst.name}: read from the store failed: {data}")
    h = hasher()
    h.update(data)
    try:
        with open(dst, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise SnapshotIOError(f"{dst}: write failed: {exc.strerror or exc}") from exc
    if progress:
        progress(len(data))
    return {"nbytes": len(data), "checksum": hex64(h.intdigest())}
