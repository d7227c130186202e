"""The writer's claim on a snapshot id, its heartbeat, and gc's collect mark.

Files inside <model>/<id>/ (all small JSON):
  .claim      exclusive create by the writer: {format_version, model, snapshot_id, tp_size,
              part_bytes, claimed_at, host, pid, token}. Exactly one writer owns an id.
  .heartbeat  rewritten every HEARTBEAT_S seconds by a background thread while a writer is open:
              {model, snapshot_id, token, at, host, pid}. gc measures a writer's age from its last
              heartbeat, so a writer slower than gc's threshold is never collected while alive.
  .gc         exclusive create by gc before it deletes anything: {token, at, host, pid}.

Commit vs gc (why a commit that reports success is never deleted). Both sides use only
exclusive creates and reads, which file://, memory://, S3 (conditional PUT, strong
read-after-write) and GCS all provide:
  gc:        (g1) create .gc exclusively   (g2) re-check snapshot.json is absent, else back off
  committer: (c1) create snapshot.json exclusively   (c2) check .gc absent and .claim is its own
A commit reports success only if c2 saw no mark, so g1 came after c2, hence after c1, so g2 sees
snapshot.json and gc backs off. gc deletes only if g2 saw no snapshot.json, so c1 came after g2,
hence c2 after g1, so the committer sees the mark, removes its snapshot.json and raises ClaimLost.
At most one of them wins (both may back off; the leftover is then collected by a later gc).
gc deletes .claim before .gc, so a late committer sees either the mark or a missing claim.
Times are UNIX seconds from the writer's and gc's clocks: hosts must keep NTP-level agreement,
far below gc's threshold (default 3600 s).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
import weakref

from . import fsutil
from .errors import ClaimLost, SnapshotError, SnapshotExists
from .format import CLAIM, FORMAT_VERSION

log = logging.getLogger(__name__)

HEARTBEAT = ".heartbeat"
GC_MARK = ".gc"
# Seconds between heartbeats; gc thresholds must be several times larger.
HEARTBEAT_S = 30.0
HEARTBEAT_ENV = "THAWLINE_HEARTBEAT_S"


def heartbeat_interval() -> float:
    try:
        return max(0.05, float(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S)))
    except ValueError:
        return HEARTBEAT_S


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_json(fs, path: str):
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:
        return ValueError  # present but unreadable


# ---- claim --------------------------------------------------------------------------------------
def claim(fs, snap_path: str, model: str, snapshot_id: str, tp_size: int, part_bytes: int) -> dict:
    """Exclusive create of the claim object; SnapshotExists if anyone claimed or committed the id."""
    body = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "snapshot_id": snapshot_id,
        "tp_size": tp_size,
        "part_bytes": part_bytes,
        "claimed_at": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": secrets.token_hex(8),
    }
    try:
        fsutil.create_exclusive(fs, fsutil.join(snap_path, CLAIM), json.dumps(body).encode())
    except FileExistsError:
        raise SnapshotExists(f"snapshot {model}/{snapshot_id} already exists or is being written by another writer") from None
    return body


def read_claim(fs, snap_path: str) -> dict:
    data = _read_json(fs, fsutil.join(snap_path, CLAIM))
    if data is None:
        raise SnapshotError(f"no writer claimed {snap_path} (call create_writer first)")
    if not isinstance(data, dict):
        raise SnapshotError(f"{fsutil.join(snap_path, CLAIM)}: not a thawline claim")
    return data


def recognised_claim(data, model: str, snapshot_id: str) -> bool:
    """True only for a claim our writer wrote for exactly this <model>/<id> (also pre-token claims).

    gc deletes nothing without it: a `.claim` that merely exists, or one naming another path (a
    store opened one level too high or too low), proves nothing.
    """
    return (
        isinstance(data, dict)
        and data.get("format_version") == FORMAT_VERSION
        and data.get("model") == model
        and data.get("snapshot_id") == snapshot_id
        and _number(data.get("claimed_at"))
        and isinstance(data.get("tp_size"), int)
        and isinstance(data.get("part_bytes"), int)
        and isinstance(data.get("host"), str)
        and isinstance(data.get("pid"), int)
    )


def last_alive(fs, snap_path: str, claim_data: dict) -> float:
    """When the claim's writer last showed life: its newest heartbeat of this claim, else claimed_at."""
    t = float(claim_data["claimed_at"])
    hb = _read_json(fs, fsutil.join(snap_path, HEARTBEAT))
    if isinstance(hb, dict) and hb.get("token") == claim_data.get("token") and _number(hb.get("at")):
        t = max(t, float(hb["at"]))
    return t


# ---- ownership (commit side) ------------------------------------------------------------------
def lost_reason(fs, snap_path: str, token: str | None) -> str | None:
    """Why the writer holding `token` no longer owns the id, or None if it still does."""
    c = _read_json(fs, fsutil.join(snap_path, CLAIM))
    if c is None:
        return "its claim was removed (gc collected it)"
    if not isinstance(c, dict) or c.get("token") != token:
        return "its id was claimed again by another writer after gc collected it"
    mark = _read_json(fs, fsutil.join(snap_path, GC_MARK))
    # A mark for another claim's token is a leftover of an earlier collection, not ours.
    if mark is not None and (not isinstance(mark, dict) or mark.get("token") == token):
        return "gc is collecting it (its heartbeat had stopped)"
    return None


def ensure_owned(fs, snap_path: str, token: str | None, where: str) -> None:
    reason = lost_reason(fs, snap_path, token)
    if reason:
        raise ClaimLost(f"{where}: this writer lost the snapshot: {reason}")


# ---- gc mark ----------------------------------------------------------------------------------
def mark_collecting(fs, snap_path: str, token: str | None, older_than_s: float) -> bool:
    """Step g1: True if this gc may collect. An existing mark younger than the threshold means
    another gc is at work; an older one is a gc that died mid-way, whose work this one finishes."""
    path = fsutil.join(snap_path, GC_MARK)
    body = {"token": token, "at": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    try:
        fsutil.create_exclusive(fs, path, json.dumps(body).encode())
        return True
    except FileExistsError:
        mark = _read_json(fs, path)
        at = mark.get("at") if isinstance(mark, dict) else None
        return _number(at) and time.time() - float(at) >= older_than_s


# ---- heartbeat --------------------------------------------------------------------------------
class Heartbeat:
    """Background thread rewriting .heartbeat while its owner (a writer) is alive.

    Stops on stop(), when the owner is garbage-collected, or when the claim is lost (then `lost`
    holds the reason, checked again by commit). Errors are retried at the next beat: a store
    hiccup must not kill a writer, and a writer that really cannot reach its store will fail on
    its own writes.
    """

    def __init__(self, fs, snap_path: str, claim_data: dict, owner=None, interval: float | None = None):
        self._fs = fs
        self._snap = snap_path
        self._token = claim_data.get("token")
        self._body = {"model": claim_data.get("model"), "snapshot_id": claim_data.get("snapshot_id"),
                      "token": self._token, "host": socket.gethostname(), "pid": os.getpid()}
        self._interval = interval or heartbeat_interval()
        self._stop = threading.Event()
        self.lost: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"thawline-heartbeat-{snap_path.rsplit('/', 1)[-1]}",
                                        daemon=True)
        if owner is not None:
            weakref.finalize(owner, self._stop.set)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        reason = lost_reason(self._fs, self._snap, self._token)
        if reason:
            self.lost = reason
            self._stop.set()
            return
        data = json.dumps({**self._body, "at": time.time()}).encode()
        path = fsutil.join(self._snap, HEARTBEAT)
        fsutil.write_atomic(self._fs, path, data, makedirs=False)
        # gc may have removed the dir between the check above and this write; an object store has
        # no dir to miss, so the write would bring back a lone .heartbeat. Check again and take
        # it back (a crash right here leaves a stray that gc recognises and collects later).
        reason = lost_reason(self._fs, self._snap, self._token)
        if reason:
            self.lost = reason
            self._stop.set()
            if _read_json(self._fs, fsutil.join(self._snap, CLAIM)) is None:
                # only while no other writer owns the id: the file is then ours alone
                try:
                    self._fs.rm_file(path)
                except FileNotFoundError:
                    pass

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.beat()
            except FileNotFoundError:  # the snapshot dir is gone: collected
                self.lost = "its snapshot dir was removed"
                return
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                log.debug("thawline: heartbeat of %s failed (%s); retrying", self._snap, exc)
