"""gc of adapter pushes that died: push dirs no adapter.json names, and nothing else.

A push writes <model>/adapters/<name>/<push-id>/ and then adapter.json; one killed in between
(or an `rm` interrupted after removing adapter.json) leaves a push dir nothing reads. gc removes
such a dir only when it can prove it is one:
  - <model>, <name> and <push-id> are valid names (a push id as layout.new_push_id makes them);
  - it holds only the files a push writes (adapter_config.json, adapter_model.safetensors); one
    other file and it is left alone, with a warning naming it;
  - its newest file is older than the threshold (a push in progress writes its files within
    seconds; stores that give no modification time are never collected);
  - adapter.json, read again just before the removal, does not name it.
A push stalled longer than the threshold whose files gc removed finds them gone right after
its commit and takes adapter.json back (AdapterStore.push). Only a commit landing inside gc's own
last check-then-remove window escapes that; its fetch then names the missing file
(AdapterCorrupt). Keep the threshold far above any push's duration.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime

from .layout import ADAPTER_FILES, ADAPTER_JSON, adapter_rel, adapters_rel, check_adapter_name, is_push_id

log = logging.getLogger(__name__)


def _stamp(entry: dict) -> float | None:
    """Modification time of a listing entry (file: mtime, S3: LastModified, GCS: updated,
    memory: created), or None when the store gives none."""
    for key in ("mtime", "LastModified", "updated", "created"):
        value = entry.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _push_dirs(store, model: str) -> dict[tuple[str, str], dict[str, float | None]]:
    """(name, push id) -> {file: mtime} of every push dir of `model`."""
    base = store._path(adapters_rel(model))
    if hasattr(store.fs, "invalidate_cache"):
        store.fs.invalidate_cache(base)
    try:
        found = store.fs.find(base, detail=True)
    except FileNotFoundError:
        return {}
    prefix = base.rstrip("/") + "/"
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for path, entry in found.items():
        rel = path.rstrip("/")[len(prefix):] if path.startswith(prefix) else ""
        parts = rel.split("/")
        if len(parts) == 3:
            out.setdefault((parts[0], parts[1]), {})[parts[2]] = _stamp(entry)
        elif len(parts) > 3:
            out.setdefault((parts[0], parts[1]), {})["/".join(parts[2:])] = None
    return out


def _committed_push_id(store, model: str, name: str) -> str | None:
    try:
        data = json.loads(store.fs.cat_file(store._path(adapter_rel(model, name), ADAPTER_JSON)))
    except FileNotFoundError:
        return None
    except ValueError:
        return ""  # unreadable: it may name any dir, so none is collected
    return data.get("push_id") if isinstance(data, dict) else ""


def _dead(store, model: str, name: str, push_id: str, files: dict, older_than_s: float) -> bool:
    try:
        check_adapter_name(name)
    except ValueError:
        return False
    if not is_push_id(push_id):
        return False
    foreign = sorted(set(files) - set(ADAPTER_FILES))
    if foreign:
        log.warning("thawline adapter gc: leaving %s alone: it holds files gc does not recognise: %s",
                    f"{store.adapter_url(model, name)}/{push_id}", ", ".join(foreign[:5]))
        return False
    stamps = list(files.values())
    if any(s is None for s in stamps) or time.time() - max(stamps) < older_than_s:
        return False
    return _committed_push_id(store, model, name) not in (push_id, "")


def collect(store, older_than_s: float = 3600.0, *, dry_run: bool = False) -> list[str]:
    """URLs of the push dirs removed (dry_run: that would be removed now; nothing is touched)."""
    removed = []
    for model in store.models():
        for (name, push_id), files in sorted(_push_dirs(store, model).items()):
            if not _dead(store, model, name, push_id, files, older_than_s):
                continue
            if not dry_run:
                store._remove_dir(store._path(adapter_rel(model, name), push_id))
            removed.append(f"{store.adapter_url(model, name)}/{push_id}")
    return removed
