"""`thawline snapshot gc` and a writer SIGKILLed while publishing snapshot.json (the commit point,
fsutil.publish_exclusive: a temp file, then link(2), then the temp file's unlink). Real writer in
a real subprocess on a file:// store, killed at the exact step; gc then runs as the CLI does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapshots.store import SnapshotStore
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

WRITER = r"""
import os, signal, sys
import torch
from snapshots.store import SnapshotStore

store_url, sid, step = sys.argv[1:4]
w = SnapshotStore(store_url).create_writer("tiny", sid, tp_size=1)
with w.rank_writer(0) as rw:
    rw.add("x", torch.arange(10, dtype=torch.float32))
real_link, real_unlink = os.link, os.unlink

def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)

def unlink(p, *a, **k):
    if step == "before_unlink" and "snapshot.json.tmp-" in str(p):
        die()
    return real_unlink(p, *a, **k)

if step == "before_link":
    os.link = die
os.unlink = unlink
w.commit()
print("committed", flush=True)
"""


def _killed_writer(store_url: str, sid: str, step: str) -> None:
    r = subprocess.run([sys.executable, "-c", WRITER, store_url, sid, step], cwd=REPO_ROOT,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9 and "committed" not in r.stdout, r.stderr[-2000:]


def _gc(store_url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli.main", "snapshot", "gc", store_url, "--older-than", "0",
                           *extra], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=300)


def test_gc_removes_what_a_writer_killed_while_publishing_left(tmp_path):
    root = tmp_path / "store"
    store_url = root.as_uri()
    _killed_writer(store_url, "before-link", "before_link")      # temp written, never linked
    _killed_writer(store_url, "before-unlink", "before_unlink")  # linked (committed), temp left
    uncommitted, committed = root / "tiny" / "before-link", root / "tiny" / "before-unlink"
    assert [p.name for p in uncommitted.glob("snapshot.json*")][0].startswith("snapshot.json.tmp-")
    assert not (uncommitted / "snapshot.json").exists()
    leftover = next(committed.glob("snapshot.json.tmp-*"))
    assert (committed / "snapshot.json").exists()
    assert [i.url for i in SnapshotStore(store_url).list()] == [f"{store_url}/tiny/before-unlink"]

    r = _gc(store_url, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert uncommitted.exists() and leftover.exists()   # a dry run touches nothing

    r = _gc(store_url, "--yes")
    assert r.returncode == 0, r.stderr
    assert f"{store_url}/tiny/before-link" in r.stdout and leftover.name in r.stdout
    assert not uncommitted.exists()                               # the dead writer's whole dir
    assert not leftover.exists() and (committed / "snapshot.json").exists()
    assert not [p.name for p in Path(committed).iterdir() if ".tmp-" in p.name]
    # the committed snapshot is untouched and still restores
    store = SnapshotStore(store_url)
    assert [i.url for i in store.list()] == [f"{store_url}/tiny/before-unlink"]
    store.verify("tiny/before-unlink")
    assert _gc(store_url, "--yes").stdout.strip() == ""   # nothing left to do
