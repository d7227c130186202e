"""fsspec helpers: open a URL, join paths, exclusive create, atomic small writes.

Everything the store does to bytes goes through an fsspec filesystem, so file://, memory://,
s3:// (s3fs) and gs:// (gcsfs) behave the same; only exclusive create needs per-backend care.
"""
from __future__ import annotations

import os
import threading
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

# memory:// checks existence and then creates, two steps; the store lives in this process only,
# so one process-wide lock makes its exclusive create atomic.
_MEMORY_CREATE_LOCK = threading.Lock()


def url_to_fs(url: str, storage_options: dict | None = None):
    """(filesystem, root path without protocol). A bare path means file://."""
    options = dict(storage_options or {})
    proto = url.split("://", 1)[0] if "://" in url else "file"
    if proto in ("s3", "s3a", "gs", "gcs"):
        # Stores are shared and mutated by other processes (writers, gc, TP workers): a cached
        # listing would hide a just-committed snapshot or show a deleted one.
        options.setdefault("use_listings_cache", False)
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path.rstrip("/") if path not in ("/", "") else path


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(*parts: str) -> str:
    out = parts[0].rstrip("/")
    for p in parts[1:]:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}" if out else p
    return out


def protocol_of(fs) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def unstrip(fs, path: str) -> str:
    """The URL of a protocol-less fsspec path."""
    if is_local(fs):
        return "file://" + path
    return f"{protocol_of(fs)}://{path.lstrip('/')}" if protocol_of(fs) != "memory" else f"memory://{path}"


def create_exclusive(fs, path: str, data: bytes) -> None:
    """Create `path` with `data` only if it does not exist; FileExistsError otherwise.

    Local: O_CREAT|O_EXCL, atomic on POSIX filesystems. Object stores: fsspec mode "xb", which
    s3fs (>= 2025.1) turns into a conditional PUT with `If-None-Match: *` (supported by AWS S3
    and by moto); memory:// under a process-wide lock. gcsfs sends "xb" as a create-only
    upload with `ifGenerationMatch=0` (real GCS answers 412, raised as FileExistsError); the gs://
    tests check that the claim upload carries it, against gcp-storage-emulator, which ignores
    preconditions, so the two-writer race itself is not run on gs://. Caveat: gcsfs's zonal
    (Rapid) bucket path writes over gRPC without any precondition, so "xb" there is not exclusive.
    """
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        os.makedirs(parent, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    try:
        fs.makedirs(parent, exist_ok=True)
    except Exception:  # noqa: BLE001 - object stores have no real dirs; makedirs may be unsupported
        pass
    if isinstance(fs, MemoryFileSystem):
        with _MEMORY_CREATE_LOCK:
            with fs.open(path, "xb") as f:
                f.write(data)
        return
    with fs.open(path, "xb") as f:
        f.write(data)


def write_atomic(fs, path: str, data: bytes) -> None:
    """A reader sees the old state or all of `data`, never a prefix.

    Object stores make a single PUT atomic already; on local disks write a temp file and rename.
    """
    if is_local(fs):
        parent = path.rsplit("/", 1)[0]
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    fs.pipe_file(path, data)


def exists(fs, path: str) -> bool:
    try:
        return fs.exists(path)
    except FileNotFoundError:
        return False
