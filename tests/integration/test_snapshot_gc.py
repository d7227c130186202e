"""gc deletes only dead Thawline writers' leftovers (issue 11, defects 2 and 3).

Real stores: file://, memory:// and S3 (moto). Writers are real, in this process or killed
subprocesses; the commit/gc race is driven by running the commit from inside gc's own
snapshot.json check (the exact interleaving that used to lose a committed snapshot).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import fresh_store_url
from snapshots import fsutil
from snapshots.errors import ClaimLost, SnapshotNotFound
from snapshots.restore import restore
from snapshots.store import SnapshotStore


@pytest.fixture(params=["file", "memory", "s3"])
def base_url(request, tmp_path):
    with fresh_store_url(request.param, request, tmp_path, "thawline-gc") as url:
        yield url


def write_rank(w, value: float = 1.0) -> None:
    with w.rank_writer(0) as rw:
        rw.add("x", np.full((20000,), value, dtype=np.float32))


def committed(store_url: str, model: str = "m", sid: str | None = None) -> str:
    w = SnapshotStore(store_url).create_writer(model, sid, tp_size=1)
    write_rank(w)
    w.commit({"engine": "none"})
    return w.url


def dead_writer(store: SnapshotStore, sid: str):
    """A claimed, uncommitted dir whose writer stopped heartbeating (as if its process died)."""
    w = store.create_writer("m", sid, tp_size=1)
    w.stop_heartbeat()
    write_rank(w)
    return w


def put(fs, path: str, data: bytes) -> None:
    if fsutil.is_local(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def all_files(fs, path: str) -> list[str]:
    try:
        return sorted(fs.find(path))
    except FileNotFoundError:
        return []


# ---- defect 2: gc given the wrong directory, or dirs it cannot prove are its own ------------------
def test_gc_on_the_stores_parent_removes_nothing(base_url):
    store_url = f"{base_url}/store"
    kept = committed(store_url)
    store = SnapshotStore(store_url)
    dead_writer(store, "dead")  # a real leftover, but two levels below what gc is pointed at
    fs = store.fs
    root = SnapshotStore(base_url).root
    put(fs, fsutil.join(root, "notes.txt"), b"unrelated")
    put(fs, fsutil.join(root, "other", "data", "file.txt"), b"unrelated")
    before = all_files(fs, root)

    parent = SnapshotStore(base_url)
    assert parent.gc() == []  # the default threshold, as in the incident
    assert parent.gc(older_than_s=0) == []
    assert all_files(fs, root) == before
    assert [i.url for i in store.list()] == [kept]


def test_gc_on_a_model_dir_removes_nothing(base_url):
    kept = committed(base_url)
    store = SnapshotStore(base_url)
    dead_writer(store, "dead")
    before = all_files(store.fs, store.root)
    assert SnapshotStore(f"{base_url}/m").gc(older_than_s=0) == []
    assert all_files(store.fs, store.root) == before
    assert store.resolve("m/latest").url == kept


def test_gc_leaves_dirs_it_cannot_prove_are_dead_writers(base_url, caplog):
    store = SnapshotStore(base_url)
    fs = store.fs
    kept = committed(base_url)
    # no claim at all: not ours
    put(fs, store._path("m", "no-claim", "readme.txt"), b"mine")
    # a claim file gc did not write / cannot recognise
    put(fs, store._path("m", "foreign", ".claim"), b'{"owner": "someone else"}')
    put(fs, store._path("m", "foreign", "data.bin"), b"x" * 100)
    # a real claim, copied to another id: it names another path, so it proves nothing here
    dead_writer(store, "original")
    put(fs, store._path("m", "copied", ".claim"), fs.cat_file(store._path("m", "original", ".claim")))
    # a dead writer's dir in which someone put a file gc does not recognise
    dead_writer(store, "mixed")
    put(fs, store._path("m", "mixed", "notes.txt"), b"do not delete")
    # and one that is plainly a dead writer
    dead_writer(store, "dead")

    assert sorted(store.gc(older_than_s=0)) == [f"{base_url}/m/dead", f"{base_url}/m/original"]
    assert fs.cat_file(store._path("m", "no-claim", "readme.txt")) == b"mine"
    assert fs.cat_file(store._path("m", "foreign", "data.bin")) == b"x" * 100
    assert fs.exists(store._path("m", "copied", ".claim"))
    assert fs.cat_file(store._path("m", "mixed", "notes.txt")) == b"do not delete"
    assert fs.exists(store._path("m", "mixed", "rank-0", "part-0.bin"))
    assert "notes.txt" in caplog.text and f"{base_url}/m/mixed" in caplog.text
    assert all_files(fs, store._path("m", "dead")) == []
    assert [i.url for i in store.list()] == [kept]
    store.create_writer("m", "dead", tp_size=1)  # the id is free again


def test_interrupted_delete_is_finished_by_gc(base_url):
    """delete() removes the claim last, so a delete cut short leaves something gc can prove is ours."""
    store = SnapshotStore(base_url)
    url = committed(base_url, sid="gone")
    fs = store.fs
    path = store._path("m", "gone")
    fs.rm_file(fsutil.join(path, "snapshot.json"))  # the first step of delete(), then the "crash"
    assert store.gc(older_than_s=0) == [url]
    assert all_files(fs, path) == []


# ---- defect 3: live writers, heartbeats and the commit/gc race ------------------------------------
# Claims, writes a rank, says so, then stays alive (heartbeating) until killed.
_SLOW_WRITER = """
import sys, numpy as np
from snapshots.store import SnapshotStore
w = SnapshotStore(sys.argv[1]).create_writer("m", "slow", tp_size=1)
with w.rank_writer(0) as rw:
    rw.add("x", np.zeros(1000, dtype=np.float32))
print("WRITING", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("base_url", ["file", "s3"], indirect=True)
def test_live_writer_older_than_the_threshold_is_kept(base_url):
    env = {**os.environ, "THAWLINE_HEARTBEAT_S": "0.2"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, base_url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    store = SnapshotStore(base_url)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", proc.stderr.read()[-2000:]
        time.sleep(3.0)  # the writer is now "older" than the 2 s threshold, but alive
        assert store.gc(older_than_s=2.0) == []
        assert store.fs.exists(store._path("m", "slow", "rank-0", "part-0.bin"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(2.5)  # its heartbeat has stopped for longer than the threshold
    assert store.gc(older_than_s=2.0) == [f"{base_url}/m/slow"]
    assert all_files(store.fs, store._path("m", "slow")) == []


def test_commit_landing_right_after_gcs_check_is_never_lost(base_url, monkeypatch):
    """The interleaving of the incident: gc checks snapshot.json (absent), the writer commits,
    gc deletes. Either the commit fails loudly and nothing is visible, or it succeeds and stays."""
    store = SnapshotStore(base_url)
    w = store.create_writer("m", "racing", tp_size=1)
    w.stop_heartbeat()  # looks dead to gc: a writer stalled for longer than the threshold
    write_rank(w, 7.0)
    outcome: dict = {}
    real_exists = fsutil.exists
    in_gc = False

    def exists(fs, path):
        found = real_exists(fs, path)
        if in_gc and not found and path.endswith("/racing/snapshot.json") and "commit" not in outcome:
            try:
                w.commit({"engine": "none"})
                outcome["commit"] = "ok"
            except ClaimLost as exc:
                outcome["commit"] = exc
        return found

    monkeypatch.setattr(fsutil, "exists", exists)
    in_gc = True
    removed = store.gc(older_than_s=0)
    in_gc = False
    monkeypatch.setattr(fsutil, "exists", real_exists)
    assert "commit" in outcome, "gc never checked snapshot.json: the race was not exercised"
    url = f"{base_url}/m/racing"
    if outcome["commit"] == "ok":
        assert removed == []
        assert restore(url, 0, use_cache=False).tensors["x"][0].item() == 7.0
    else:
        assert removed == [url]
        assert "gc is collecting it" in str(outcome["commit"])
        assert store.list() == []
        with pytest.raises(SnapshotNotFound):
            store.resolve("m/racing")


def test_gc_right_after_commit_point_backs_off(base_url, monkeypatch):
    """gc between the commit point and the committer's final check: gc sees snapshot.json and
    backs off, the commit succeeds, the snapshot stays."""
    store = SnapshotStore(base_url)
    w = store.create_writer("m", "late", tp_size=1)
    w.stop_heartbeat()
    write_rank(w, 3.0)
    ran = []
    for name in ("publish_exclusive", "write_atomic"):  # whichever writes the commit point
        real = getattr(fsutil, name, None)
        if real is None:
            continue

        def hooked(fs, path, data, *a, _real=real, **kw):
            _real(fs, path, data, *a, **kw)
            if path.endswith("/late/snapshot.json") and not ran:
                ran.append(store.gc(older_than_s=0))

        monkeypatch.setattr(fsutil, name, hooked)
    w.commit({"engine": "none"})
    assert ran == [[]]
    assert restore(f"{base_url}/m/late", 0, use_cache=False).tensors["x"][0].item() == 3.0


def test_writer_collected_by_gc_cannot_commit_over_a_new_claim(base_url, monkeypatch):
    monkeypatch.setenv("THAWLINE_HEARTBEAT_S", "0.1")
    store = SnapshotStore(base_url)
    old = store.create_writer("m", "reused", tp_size=1)
    write_rank(old, 1.0)
    assert store.gc(older_than_s=0) == [f"{base_url}/m/reused"]  # threshold 0: collected although alive
    time.sleep(0.5)  # several heartbeat periods: the old writer's heartbeat must not resurrect the dir
    assert all_files(store.fs, store._path("m", "reused")) == []
    with pytest.raises(ClaimLost, match="claim was removed"):
        old.commit({"engine": "none"})
    new = store.create_writer("m", "reused", tp_size=1)
    write_rank(new, 2.0)
    with pytest.raises(ClaimLost, match="claimed again by another writer"):
        old.commit({"engine": "none"})
    new.commit({"engine": "none"})
    old.abort()  # must not delete the new writer's snapshot
    assert restore(f"{base_url}/m/reused", 0, use_cache=False).tensors["x"][0].item() == 2.0
    claim = json.loads(store.fs.cat_file(store._path("m", "reused", ".claim")))
    assert claim["token"] == new._token


def test_a_stray_heartbeat_alone_is_collected_only_when_it_is_ours_and_stale(base_url):
    """A heartbeat that raced gc's deletion leaves `.heartbeat` alone in the dir: gc recognises
    it by its <model>/<id>; one naming another path, or a young one, stays."""
    store = SnapshotStore(base_url)
    fs = store.fs
    old = time.time() - 10
    put(fs, store._path("m", "stray", ".heartbeat"),
        json.dumps({"model": "m", "snapshot_id": "stray", "token": "t", "at": old}).encode())
    put(fs, store._path("m", "other", ".heartbeat"),
        json.dumps({"model": "x", "snapshot_id": "y", "token": "t", "at": old}).encode())
    put(fs, store._path("m", "young", ".heartbeat"),
        json.dumps({"model": "m", "snapshot_id": "young", "token": "t", "at": time.time()}).encode())
    assert store.gc(older_than_s=5) == [f"{base_url}/m/stray"]
    assert fs.exists(store._path("m", "other", ".heartbeat")) and fs.exists(store._path("m", "young", ".heartbeat"))
