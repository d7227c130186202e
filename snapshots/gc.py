"""gc: remove leftovers of snapshot writers that died, and nothing else.

gc runs with a URL typed by a person, who may point it one level too high or too low. So it
deletes only what it can prove is an uncommitted Thawline snapshot dir:
  - <model>/<id> are valid names and the dir holds a `.claim` our writer wrote for exactly that
    <model>/<id> (claim.recognised_claim), and no snapshot.json;
  - the writer's last heartbeat (or its claim time) is older than the threshold;
  - every file in the dir is one our writer, gc or the cache protocol names (_OURS); one
    unrecognised file and the whole dir is left alone, with a warning naming it.
A dir merely lacking snapshot.json, a file it does not recognise, or a dir with a foreign claim is
never touched, nor is `<model>/adapters/` (a reserved id: the model's LoRA adapters, whose dead
pushes snapshots/adapters/gc.py collects). The one exception to "has a claim" is a dir holding nothing but a stale
`.heartbeat` of that same <model>/<id> (a heartbeat that raced gc's deletion, see claim.py)
and/or a stale `.gc` mark (a gc that died between removing the claim and its mark).

Deleting follows the protocol in claim.py: mark (.gc), re-check snapshot.json, delete the data,
the heartbeat, then `.claim`, then the mark.

A writer killed while publishing snapshot.json (fsutil.publish_exclusive on a local disk: temp
file, then link) leaves `snapshot.json.tmp-xxxxxxxx`: next to no snapshot.json, it is one of the
uncommitted dir's own files (the dir goes as above); next to a committed snapshot.json, only that
temp file goes, once older than the threshold (a publish in progress lasts milliseconds).
"""
from __future__ import annotations

import json
import logging
import re
import time

from . import fsutil
from .writer_claim import CLAIM, GC_MARK, HEARTBEAT, last_alive, mark_collecting, recognised_claim
from .format import SNAPSHOT_JSON, check_name

log = logging.getLogger(__name__)

# Files a writer of this version (or an earlier one) creates inside <model>/<id>/. engine/ is the
# writer's put_file area (engine state, engine/hf, nccl, compile cache). `.tmp-xxxxxxxx` is a temp
# file of fsutil.write_atomic interrupted before its rename.
_OURS = re.compile(
    r"(\.claim|\.heartbeat|\.gc|manifest\.parquet|rank-\d+/part-\d+\.bin|rank-\d+/manifest\.parquet|engine/[^\n]+)"
    r"(\.tmp-[0-9a-f]{8})?"
)
# The commit point's temp file (never the bare snapshot.json: that one makes a dir committed).
_PUBLISH_TMP = re.compile(re.escape(SNAPSHOT_JSON) + r"\.tmp-[0-9a-f]{8}")


def _ours(rel: str) -> bool:
    return bool(_OURS.fullmatch(rel) or _PUBLISH_TMP.fullmatch(rel))


def _valid_name(kind: str, name: str) -> bool:
    try:
        check_name(kind, name)
        return True
    except ValueError:
        return False


def _relative_files(fs, path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    out = []
    for p in fs.find(path):
        p = p.rstrip("/")
        out.append(p[len(prefix):] if p.startswith(prefix) else p)
    return sorted(out)


def _read(fs, path: str):
    try:
        return json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None


def _remove_empty_dirs(fs, path: str) -> None:
    """Object stores have no dirs; file:// and memory:// keep empty ones around."""
    if fsutil.protocol_of(fs) not in ("file", "local", "memory"):
        return
    dirs = [path]
    try:
        dirs += [d for d, _, _ in fs.walk(path)]
    except FileNotFoundError:
        return
    for d in sorted(set(dirs), key=len, reverse=True):
        try:
            fs.rmdir(d)  # only ever succeeds on an empty dir
        except (OSError, FileNotFoundError):
            pass


def collect(store, older_than_s: float, *, dry_run: bool = False) -> list[str]:
    """URLs of the dirs removed (dry_run: that would be removed now; nothing is touched)."""
    fs = store.fs
    removed = []
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(store.root)
    for model in store._ls_dirs(store.root):
        if not _valid_name("model name", model):
            continue
        for sid in store._ls_dirs(store._path(model)):
            if not _valid_name("snapshot id", sid):
                continue
            if _collect_one(store, model, sid, older_than_s, dry_run):
                removed.append(f"{store.url}/{model}/{sid}")
            else:
                removed.extend(_committed_publish_leftovers(store, model, sid, older_than_s, dry_run))
    return removed


def _age_s(fs, path: str) -> float | None:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    at = info.get("mtime") or info.get("created")
    if hasattr(at, "timestamp"):
        at = at.timestamp()
    return time.time() - float(at) if isinstance(at, (int, float)) else None


def _committed_publish_leftovers(store, model: str, sid: str, older_than_s: float, dry_run: bool) -> list[str]:
    """URLs of stale `snapshot.json.tmp-*` files removed from a committed snapshot dir."""
    fs = store.fs
    path = store._path(model, sid)
    if not fsutil.exists(fs, fsutil.join(path, SNAPSHOT_JSON)):
        return []
    out = []
    for rel in _relative_files(fs, path):
        if not _PUBLISH_TMP.fullmatch(rel):
            continue
        age = _age_s(fs, fsutil.join(path, rel))
        if age is None or age < older_than_s:
            continue
        if not dry_run:
            _rm(fs, path, rel)
        out.append(f"{store.url}/{model}/{sid}/{rel}")
    return out


def _collect_one(store, model: str, sid: str, older_than_s: float, dry_run: bool = False) -> bool:
    fs = store.fs
    path = store._path(model, sid)
    url = f"{store.url}/{model}/{sid}"
    files = _relative_files(fs, path)
    if SNAPSHOT_JSON in files:
        return False  # committed
    claim_data = _read(fs, fsutil.join(path, CLAIM))
    if not recognised_claim(claim_data, model, sid):
        return _collect_orphans(store, model, sid, files, older_than_s, dry_run)
    foreign = [f for f in files if not _ours(f)]
    if foreign:
        log.warning("thawline gc: leaving %s alone: it holds files gc does not recognise: %s", url, ", ".join(foreign[:5]))
        return False
    if time.time() - last_alive(fs, path, claim_data) < older_than_s:
        return False  # the writer heartbeated recently: still running
    if dry_run:
        return True
    token = claim_data.get("token")
    # g1, then g2 (claim.py): after the mark, a commit that lands is one we must not delete.
    if not mark_collecting(fs, path, token, older_than_s):
        return False
    if fsutil.exists(fs, fsutil.join(path, SNAPSHOT_JSON)):
        _rm(fs, path, GC_MARK)
        return False
    # Re-list: files written since the first listing by a writer that is about to find the mark.
    files = [f for f in _relative_files(fs, path) if _ours(f)]
    for rel in files:
        if rel not in (CLAIM, GC_MARK, HEARTBEAT):
            _rm(fs, path, rel)
    _rm(fs, path, HEARTBEAT)
    _rm(fs, path, CLAIM)  # frees the id ...
    _rm(fs, path, GC_MARK)  # ... and only then the mark, so a late committer sees one or the other
    _remove_empty_dirs(fs, path)
    return True


def _collect_orphans(store, model: str, sid: str, files: list[str], older_than_s: float,
                     dry_run: bool = False) -> bool:
    """A dir holding only a stale `.heartbeat` of this <model>/<id> (a beat that raced gc's
    deletion) and/or a stale `.gc` mark (a gc that died after removing the claim)."""
    if not files or not set(files) <= {HEARTBEAT, GC_MARK}:
        return False
    fs = store.fs
    path = store._path(model, sid)
    now = time.time()
    for rel in files:
        data = _read(fs, fsutil.join(path, rel))
        at = data.get("at") if isinstance(data, dict) else None
        if not isinstance(at, (int, float)) or now - at < older_than_s:
            return False
        if rel == HEARTBEAT and (data.get("model"), data.get("snapshot_id")) != (model, sid):
            return False
    if dry_run:
        return True
    for rel in files:
        _rm(fs, path, rel)
    _remove_empty_dirs(fs, path)
    return True


def _rm(fs, path: str, rel: str) -> None:
    try:
        fs.rm_file(fsutil.join(path, rel))
    except FileNotFoundError:
        pass

