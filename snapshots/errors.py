"""Snapshot errors: one class per failure a caller may want to handle differently.

Every message is a single readable line, so the CLI can print it as is.
"""
from __future__ import annotations


class SnapshotError(Exception):
    """Base of every snapshot failure."""


class SnapshotNotFound(SnapshotError):
    """No committed snapshot (or no snapshot.json) at the given reference."""


class SnapshotExists(SnapshotError):
    """The snapshot id is already claimed or committed by another writer."""


class SnapshotCorrupt(SnapshotError):
    """Bytes on the store do not match the manifest. `rank` and `tensor` name where (None = file level)."""

    def __init__(self, message: str, *, rank: int | None = None, tensor: str | None = None):
        super().__init__(message)
        self.rank = rank
        self.tensor = tensor


class UnsafeSnapshotPath(SnapshotCorrupt):
    """A path read from snapshot.json / the manifest / engine state is absolute, not normalised, or
    leaves the snapshot dir. Followed, it would read or write anywhere on the node."""


class UnsupportedStore(SnapshotError):
    """The URL's fsspec scheme is not a snapshot store (http://, ftp://, chained URLs, ...)."""


class SnapshotIOError(SnapshotError):
    """Writing a file failed (disk full, short write, I/O error); the message names the file."""


class ClaimLost(SnapshotError):
    """The writer no longer owns its snapshot id: gc is collecting it, or another writer claimed it."""


class UnsupportedFormatVersion(SnapshotError):
    """snapshot.json carries a format version this reader does not understand."""

    def __init__(self, found, supported: int, where: str | None = None):
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}unsupported snapshot format version {found!r} (this thawline reads version {supported})")
        self.found = found
        self.supported = supported
        self.where = where


class RankOutOfRange(SnapshotError):
    """A TP rank outside [0, tp_size) was asked for."""

    def __init__(self, rank: int, tp_size: int):
        super().__init__(f"rank {rank} out of range: snapshot has tp_size={tp_size} (ranks 0..{tp_size - 1})")
        self.rank = rank
        self.tp_size = tp_size
