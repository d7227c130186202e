"""Paths read from a snapshot (snapshot.json, manifest, engine state) are untrusted input.

A snapshot comes from a shared store: whoever can write `snapshot.json` there must not be able to
make a node read or write outside the snapshot dir (the node cache joins these paths onto a local
directory, restore opens them). Every such path is checked here before any use: a relative,
normalised POSIX path of ordinary components, so joined onto the snapshot dir it stays inside it.
"""
from __future__ import annotations

import posixpath
from pathlib import Path

from .errors import UnsafeSnapshotPath


def safe_relpath(rel, *, where: str) -> str:
    """`rel` unchanged if it is a safe path inside the snapshot dir; UnsafeSnapshotPath otherwise.

    where: the file the path was read from (named in the error with the offending path).
    """
    problem = None
    if not isinstance(rel, str) or not rel:
        problem = "not a non-empty string"
    elif "\x00" in rel or "\\" in rel or any(ord(c) < 32 for c in rel):
        problem = "contains a NUL, backslash or control character"
    elif rel.startswith("/"):
        problem = "is absolute"
    elif any(c in ("", ".", "..") for c in rel.split("/")):
        # Rejects `..` (escapes), and `a//b`, `./a`, `a/` (not normalised: two spellings of one
        # file would defeat the reserved-name and membership checks made on the string).
        problem = "is not a normalised relative path (empty, '.' or '..' component)"
    elif posixpath.normpath(rel) != rel:
        problem = "is not normalised"
    if problem:
        raise UnsafeSnapshotPath(f"{where}: unsafe path {rel!r} {problem}; refusing to use it")
    return rel


# Names the store and the node cache use for their own bookkeeping (format.py, claim.py,
# cache.py): an extra file must not overwrite them, e.g. forge the cache's completion markers.
_RESERVED_TOP = {"snapshot.json", "manifest.parquet", ".claim", ".heartbeat", ".gc", ".thawline-cache"}


def check_meta_paths(meta, where: str) -> None:
    """Every path snapshot.json names: extra files, and every rank's part files (under rank-<r>/)."""
    for f in meta.files:
        safe_relpath(f, where=where)
        if f.split("/", 1)[0] in _RESERVED_TOP or f.startswith("rank-") or f.endswith(".partial"):
            raise UnsafeSnapshotPath(f"{where}: extra file {f!r} uses a reserved name; refusing to use it")
    for info in meta.ranks:
        for p in info.parts:
            safe_relpath(p.path, where=where)
            if not p.path.startswith(f"rank-{info.rank}/") or p.path.endswith(".partial"):
                raise UnsafeSnapshotPath(f"{where}: part {p.path!r} of rank {info.rank} is not under rank-{info.rank}/")


def local_join(base: Path, rel: str, *, where: str) -> Path:
    """base/rel for a local dir, after safe_relpath, and checked once more after resolving
    symlinks already on disk (a symlinked subdir of the cache must not lead outside it either)."""
    safe_relpath(rel, where=where)
    out = base / rel
    root = base.resolve()
    if not out.resolve().is_relative_to(root):
        raise UnsafeSnapshotPath(f"{where}: path {rel!r} resolves outside {base}; refusing to use it")
    return out
