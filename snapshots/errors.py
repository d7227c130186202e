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


class UnsupportedFormatVersion(SnapshotError):
    """snapshot.json carries a format version this reader does not understand."""

    def __init__(self, found, supported: int):
        super().__init__(f"unsupported snapshot format version {found!r} (this thawline reads version {supported})")
        self.found = found
        self.supported = supported


class RankOutOfRange(SnapshotError):
    """A TP rank outside [0, tp_size) was asked for."""

    def __init__(self, rank: int, tp_size: int):
        super().__init__(f"rank {rank} out of range: snapshot has tp_size={tp_size} (ranks 0..{tp_size - 1})")
        self.rank = rank
        self.tp_size = tp_size
