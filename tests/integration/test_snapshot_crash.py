"""A writer process killed halfway (SIGKILL, no cleanup) leaves nothing visible; gc removes it."""
from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import pytest

from snapshots.errors import SnapshotExists, SnapshotNotFound
from snapshots.store import SnapshotStore

# Writes rank 0 of a TP=2 snapshot in 1 MiB parts, announces it is mid-write, then blocks on stdin
# (no sleep) until the test kills it: parts and the claim exist, snapshot.json never will.
_DOOMED_WRITER = """
import sys, numpy as np
from snapshots.store import SnapshotStore
w = SnapshotStore(sys.argv[1]).create_writer("m", "doomed", tp_size=2, part_bytes=1 << 20)
rw = w.rank_writer(0)
for i in range(12):
    rw.add(f"t{i}", np.full((65536,), i, dtype=np.float32))
print("MID-WRITE", flush=True)
sys.stdin.read()
"""


@pytest.fixture(params=["file", "s3"])
def store_url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path}/store"
    return f"{request.getfixturevalue('s3_bucket_url')}/{uuid.uuid4().hex[:8]}"


def kill_writer_mid_write(store_url: str) -> None:
    """Run _DOOMED_WRITER against store_url and SIGKILL it once it is halfway through a rank."""
    proc = subprocess.Popen([sys.executable, "-c", _DOOMED_WRITER, store_url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "MID-WRITE", proc.stderr.read()[-2000:] if not line else line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_killed_writer_leaves_nothing_visible_and_gc_cleans_up(store_url):
    kill_writer_mid_write(store_url)

    store = SnapshotStore(store_url)
    leftovers = store.fs.find(store._path("m", "doomed"))
    assert any(p.endswith("rank-0/part-0.bin") for p in leftovers)  # really killed mid-write
    assert store.list() == []
    with pytest.raises(SnapshotNotFound):
        store.resolve("m/doomed")
    with pytest.raises(SnapshotNotFound):
        store.resolve("m/latest")
    with pytest.raises(SnapshotExists):  # the dead writer's claim still holds the id ...
        store.create_writer("m", "doomed", tp_size=1)
    assert store.gc(older_than_s=3600) == []  # ... and gc leaves young claims alone
    assert store.gc(older_than_s=0) == [f"{store.url}/m/doomed"]
    assert store.fs.find(store._path("m")) == []
    store.create_writer("m", "doomed", tp_size=1)  # id free again
