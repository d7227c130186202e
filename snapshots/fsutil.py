"""fsspec helpers: open a URL, join paths, exclusive create, atomic small writes.

Everything the store does to bytes goes through an fsspec filesystem, so file://, memory://,
s3:// (s3fs) and gs:// (gcsfs) behave the same; only exclusive create needs per-backend care.
"""
from __future__ import annotations

import errno
import os
import threading
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from .errors import SnapshotIOError, UnsupportedStore

# memory:// checks existence and then creates, two steps; the store lives in this process only,
# so one process-wide lock makes its exclusive create atomic.
_MEMORY_CREATE_LOCK = threading.Lock()

# Schemes that are snapshot stores. fsspec opens almost anything (http://, ftp://, chained
# "simplecache::..." URLs), and a URL taken from a config or a command line must not turn a fetch
# into a request to an arbitrary server. Other fsspec schemes are refused unless the caller passes
# allow_any_scheme=True or sets THAWLINE_ALLOW_ANY_SCHEME=1 (a deliberate, documented opt-in).
STORE_SCHEMES = frozenset({"file", "local", "memory", "s3", "s3a", "gs", "gcs"})
ALLOW_ANY_SCHEME_ENV = "THAWLINE_ALLOW_ANY_SCHEME"


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def check_scheme(url: str, allow_any_scheme: bool = False) -> str:
    """The URL's scheme if it is a store (or any scheme when allowed); UnsupportedStore otherwise."""
    proto = scheme_of(url)
    if proto in STORE_SCHEMES or allow_any_scheme or os.environ.get(ALLOW_ANY_SCHEME_ENV) == "1":
        return proto
    raise UnsupportedStore(
        f"{url}: scheme {proto!r} is not a snapshot store (allowed: {', '.join(sorted(STORE_SCHEMES))}; "
        f"set {ALLOW_ANY_SCHEME_ENV}=1 to use another fsspec scheme deliberately)"
    )


def url_to_fs(url: str, storage_options: dict | None = None, *, allow_any_scheme: bool = False):
    """(filesystem, root path without protocol). A bare path means file://."""
    options = dict(storage_options or {})
    proto = check_scheme(url, allow_any_scheme)
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
            write_all(fd, data, 0, path)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)  # a half-written claim must not hold the id
            raise
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


def write_all(fd: int, data, offset: int, name: str) -> None:
    """pwrite every byte of `data` at `offset`, looping on short writes.

    A short write is normal for pwrite (signals, a nearly full disk); ignoring its count leaves a
    hole that reads back as zeros. 0 bytes written, or an OSError (ENOSPC, EIO), raises
    SnapshotIOError naming the file.
    """
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        try:
            n = os.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            raise SnapshotIOError(f"{name}: write failed at byte {offset + done}: {exc.strerror or exc}") from exc
        if n <= 0:
            raise SnapshotIOError(f"{name}: write made no progress at byte {offset + done} (disk full?)")
        done += n


def _write_temp(path: str, data: bytes, makedirs: bool) -> str:
    """Write `data` to a fresh temp file next to `path`, fsynced; returns the temp path."""
    parent = path.rsplit("/", 1)[0]
    if makedirs:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data, 0, path)
        try:
            os.fsync(fd)
        except OSError as exc:
            raise SnapshotIOError(f"{path}: fsync failed: {exc.strerror or exc}") from exc
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def write_atomic(fs, path: str, data: bytes, *, makedirs: bool = True) -> None:
    """A reader sees the old state or all of `data`, never a prefix.

    Object stores make a single PUT atomic already; on local disks write a temp file and rename.
    makedirs=False: fail (FileNotFoundError) when the parent is gone instead of re-creating it
    (a heartbeat must not resurrect a dir that gc removed).
    """
    if is_local(fs):
        tmp = _write_temp(path, data, makedirs)
        os.replace(tmp, path)
        return
    fs.pipe_file(path, data)


def publish_exclusive(fs, path: str, data: bytes) -> None:
    """Make `path` appear with all of `data` at once, only if it does not exist (FileExistsError).

    The commit point: atomic like write_atomic (no reader sees a prefix) and exclusive like
    create_exclusive (never replaces someone else's file). Local: temp file, then link(2), which
    fails if the name exists; object stores: one conditional PUT (create_exclusive).
    """
    if is_local(fs):
        tmp = _write_temp(path, data, True)
        try:
            os.link(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                raise
            # No hard links on this filesystem (some FUSE / SMB mounts): exists-then-rename, still
            # atomic for readers; exclusive up to that small window.
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, "file exists", path) from None
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    create_exclusive(fs, path, data)


def exists(fs, path: str) -> bool:
    try:
        return fs.exists(path)
    except FileNotFoundError:
        return False


def _whole_read_kwargs(fs) -> dict:
    """s3fs's _cat_file asks for the object's size (a HEAD) before its GET whenever it may split
    the read into concurrent ranges; a whole read of a small file needs neither."""
    import inspect

    params = inspect.signature(fs._cat_file).parameters
    return {"max_concurrency": 1} if "max_concurrency" in params else {}


def read_whole(fs, paths: list[str]) -> dict[str, bytes | BaseException]:
    """Each path's bytes, or the exception its read raised (FileNotFoundError for a missing one).
    One GET per path and no HEAD on object stores, all paths at once on async filesystems (s3fs,
    gcsfs): a small file on S3 costs one round trip, and several cost about one. For small files
    (manifests, adapters); large ones stream."""
    if getattr(fs, "async_impl", False) and not getattr(fs, "asynchronous", False):
        import asyncio

        from fsspec.asyn import sync

        kwargs = _whole_read_kwargs(fs)

        async def one(path: str):
            try:
                return await fs._cat_file(path, **kwargs)
            except Exception as exc:  # noqa: BLE001 - returned to the caller, per path
                return exc

        async def every():
            return await asyncio.gather(*(one(p) for p in paths))

        return dict(zip(paths, sync(fs.loop, every)))
    out: dict[str, bytes | BaseException] = {}
    for path in paths:
        try:
            out[path] = fs.cat_file(path)
        except Exception as exc:  # noqa: BLE001 - returned to the caller, per path
            out[path] = exc
    return out


def bytes_or_raise(result: bytes | BaseException) -> bytes:
    """One of read_whole's results: the bytes, or raise the exception its read gave."""
    if isinstance(result, BaseException):
        raise result
    return result


def cat_whole(fs, path: str) -> bytes:
    """One small file's bytes in one GET (read_whole); raises what the read raised."""
    return bytes_or_raise(read_whole(fs, [path])[path])
