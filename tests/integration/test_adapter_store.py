"""LoRA adapters in the snapshot store (snapshots/adapters/) on file://, memory:// and S3 (moto):
push / ls / get / fetch round trips, half-written pushes, racing pushes, corruption named on
fetch, a wrong base refused by name, rm, and the snapshot side (listing, gc) leaving adapters be.

The base is an offline (`--engine none`) snapshot of the generated tiny Llama (hidden 128); the
adapters are hand-made PEFT dirs (tests/lora_dirs.py).
"""
from __future__ import annotations

import json
import threading

import pytest

from cluster.models.tinyllama import generate_llama
from snapshots import fsutil
from snapshots.adapters import (
    AdapterBaseMismatch,
    AdapterCorrupt,
    AdapterError,
    AdapterExists,
    AdapterNotFound,
    AdapterStore,
    adapter_cache_root,
)
from snapshots.adapters import transfer
from snapshots.cache import store_key
from snapshots.offline import create_offline_snapshot
from snapshots.store import SnapshotStore
from tests.conftest import fresh_store_url
from tests.lora_dirs import make_lora_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate_llama(tmp_path_factory.mktemp("tiny"), preset="tiny")


@pytest.fixture(params=["file", "memory", "s3"])
def store_url(request, tmp_path, tiny_dir):
    """A store holding one committed snapshot of `tiny`."""
    with fresh_store_url(request.param, request, tmp_path, "adapters-test") as url:
        create_offline_snapshot(tiny_dir, tp=1, store_url=url, name="tiny")
        yield url


@pytest.fixture
def lora(tmp_path):
    return make_lora_dir(tmp_path / "alice", rank=4, alpha=8, targets=("q_proj", "v_proj", "o_proj"))


def _files_under(store: AdapterStore, rel: str) -> list[str]:
    path = fsutil.join(store.root, rel)
    if hasattr(store.fs, "invalidate_cache"):
        store.fs.invalidate_cache(path)
    try:
        return sorted(p[len(path) + 1:] for p in store.fs.find(path))
    except FileNotFoundError:
        return []


def _put(store: AdapterStore, rel: str, data: bytes) -> None:
    path = fsutil.join(store.root, rel)
    if fsutil.is_local(store.fs):
        store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    store.fs.pipe_file(path, data)


def _local_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_push_ls_get_fetch_round_trip(store_url, lora, tmp_path):
    store = AdapterStore(store_url)
    seen = []
    info = store.push(lora, model="tiny", name="alice", progress=seen.append)
    assert info.url == f"{store_url}/tiny/adapters/alice" and info.model == "tiny" and info.name == "alice"
    sizes = {f: (lora / f).stat().st_size for f in ("adapter_config.json", "adapter_model.safetensors")}
    assert {f: v["nbytes"] for f, v in info.files.items()} == sizes and info.nbytes == sum(seen) == sum(sizes.values())
    b = info.base
    assert (b.architecture, b.hidden_size, b.rank, b.lora_alpha, b.base_model) == ("LlamaForCausalLM", 128, 4, 8.0, "tiny")
    assert b.target_modules == ("o_proj", "q_proj", "v_proj")
    # the commit marker: sorted-key JSON naming the push dir, which holds the two files
    raw = store.fs.cat_file(fsutil.join(store.root, "tiny/adapters/alice/adapter.json"))
    assert list(json.loads(raw)) == sorted(json.loads(raw)) and json.loads(raw)["push_id"] == info.push_id
    assert _files_under(store, "tiny/adapters") == sorted([
        "alice/adapter.json", f"alice/{info.push_id}/adapter_config.json", f"alice/{info.push_id}/adapter_model.safetensors"])

    assert store.names("tiny") == ["alice"] and store.get("tiny", "alice") == info
    assert store.list("tiny") == [info] and store.list() == [info]
    assert AdapterStore(store_url).list(None)[0].to_dict() == info.to_dict()

    cache_root = tmp_path / "cache"
    got, local = store.fetch("tiny", "alice", cache_root)
    assert got == info
    assert local == cache_root / "adapters" / store_key(store.url) / "tiny" / "alice" / info.push_id
    for f in sizes:
        assert (local / f).read_bytes() == (lora / f).read_bytes()
    assert _local_files(cache_root / "adapters") == [
        str((local / f).relative_to(cache_root / "adapters")) for f in sorted(sizes)]  # no temp dir left
    assert adapter_cache_root(cache_root) == cache_root


def test_a_second_fetch_is_a_cache_hit_and_a_broken_copy_is_replaced(store_url, lora, tmp_path, monkeypatch):
    store = AdapterStore(store_url)
    store.push(lora, model="tiny", name="alice")
    _, local = store.fetch("tiny", "alice", tmp_path / "cache")
    calls = []  # files written into the cache, by either download path (streamed or read whole)
    for fn in ("download", "write_checked"):
        real = getattr(transfer, fn)
        monkeypatch.setattr(f"snapshots.adapters.fetch.{fn}",
                            lambda *a, _real=real, **k: calls.append(a[1]) or _real(*a, **k))
    assert store.fetch("tiny", "alice", tmp_path / "cache")[1] == local and calls == []
    # a truncated cached file (sizes are checked on a hit) is fetched again, whole
    (local / "adapter_model.safetensors").write_bytes(b"cut")
    assert store.fetch("tiny", "alice", tmp_path / "cache")[1] == local
    assert len(calls) == 2 and (local / "adapter_model.safetensors").read_bytes() == (
        lora / "adapter_model.safetensors").read_bytes()


def test_a_half_written_push_is_invisible(store_url, lora, tmp_path):
    store = AdapterStore(store_url)
    store.push(lora, model="tiny", name="alice")
    # what a push killed before its commit leaves: files under a push id, no adapter.json
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        _put(store, f"tiny/adapters/bob/20260101T000000Z-0badf00d/{f}", (lora / f).read_bytes())
    assert store.names("tiny") == ["alice"] and [i.name for i in store.list()] == ["alice"]
    with pytest.raises(AdapterNotFound, match=f"no adapter 'bob' of 'tiny' in {store_url}"):
        store.get("tiny", "bob")
    with pytest.raises(AdapterNotFound):
        store.fetch("tiny", "bob", tmp_path / "cache")
    assert not (tmp_path / "cache" / "adapters").exists()


def test_a_push_that_fails_midway_leaves_nothing(store_url, lora):
    store = AdapterStore(store_url)

    def boom(n):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        store.push(lora, model="tiny", name="alice", progress=boom)
    assert _files_under(store, "tiny/adapters") == [] and store.names("tiny") == []


def test_two_racing_pushes_of_one_name_exactly_one_wins(store_url, tmp_path):
    store = AdapterStore(store_url)
    dirs = [make_lora_dir(tmp_path / f"a{i}", seed=i) for i in range(2)]
    barrier = threading.Barrier(2, timeout=30)
    first_bytes = [threading.Event(), threading.Event()]

    def push(i):
        def progress(n):
            if not first_bytes[i].is_set():  # both are past the "already exists" check: race the commit
                first_bytes[i].set()
                barrier.wait()
        try:
            return store.push(dirs[i], model="tiny", name="alice", progress=progress)
        except AdapterExists as exc:
            return exc

    threads_out = [None, None]
    threads = [threading.Thread(target=lambda i=i: threads_out.__setitem__(i, push(i))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [o for o in threads_out if not isinstance(o, Exception)]
    losers = [o for o in threads_out if isinstance(o, AdapterExists)]
    assert len(winners) == 1 and len(losers) == 1, threads_out
    assert "adapter 'alice' of 'tiny'" in str(losers[0]) and "already exists" in str(losers[0])
    win = winners[0]
    # the loser removed its push dir: only the winner's files are left, and they are the winner's bytes
    assert _files_under(store, "tiny/adapters") == sorted([
        "alice/adapter.json", f"alice/{win.push_id}/adapter_config.json", f"alice/{win.push_id}/adapter_model.safetensors"])
    _, local = store.fetch("tiny", "alice", tmp_path / "cache")
    src = dirs[threads_out.index(win)]
    assert (local / "adapter_model.safetensors").read_bytes() == (src / "adapter_model.safetensors").read_bytes()


def test_an_existing_name_is_refused_before_any_upload(store_url, lora):
    store = AdapterStore(store_url)
    first = store.push(lora, model="tiny", name="alice")
    before = _files_under(store, "tiny/adapters")
    with pytest.raises(AdapterExists, match="remove it first: thawline adapter rm alice --base tiny"):
        store.push(lora, model="tiny", name="alice")
    assert _files_under(store, "tiny/adapters") == before and store.get("tiny", "alice") == first


@pytest.mark.parametrize("read", ["whole", "streamed"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_a_corrupted_file_is_named_on_fetch_and_nothing_is_cached(store_url, lora, tmp_path, damage, read,
                                                                  monkeypatch):
    if read == "streamed":  # what an adapter above the whole-read size takes
        monkeypatch.setattr("snapshots.adapters.fetch.WHOLE_READ_MAX_BYTES", 0)
    store = AdapterStore(store_url)
    info = store.push(lora, model="tiny", name="alice")
    path = fsutil.join(store.root, "tiny/adapters/alice", info.push_id, "adapter_model.safetensors")
    data = bytearray(store.fs.cat_file(path))
    if damage == "remove":
        store.fs.rm_file(path)
    else:
        data[-1] ^= 0x01
        store.fs.pipe_file(path, bytes(data if damage == "flip" else data[:-10]))
    with pytest.raises(AdapterCorrupt) as err:
        store.fetch("tiny", "alice", tmp_path / "cache")
    msg = str(err.value)
    assert msg.startswith(f"adapter 'alice' of 'tiny' ({info.url}): adapter_model.safetensors"), msg
    assert ("is missing from push" in msg) if damage == "remove" else ("does not match adapter.json" in msg)
    assert _local_files(tmp_path / "cache" / "adapters") == []


def test_a_wrong_base_is_refused_by_name_and_nothing_is_stored(store_url, tmp_path):
    store = AdapterStore(store_url)
    wide = make_lora_dir(tmp_path / "wide", hidden=256)
    with pytest.raises(AdapterBaseMismatch) as err:
        store.push(wide, model="tiny", name="alice")
    assert str(err.value) == "adapter 'alice' (hidden 256) does not fit base 'tiny' (LlamaForCausalLM, hidden 128)"
    with pytest.raises(AdapterError) as err:
        store.push(make_lora_dir(tmp_path / "ok"), model="nope", name="alice")
    assert f"no committed snapshot of base model 'nope' in {store_url}" in str(err.value)
    with pytest.raises(AdapterError, match="peft_type 'IA3'"):
        store.push(make_lora_dir(tmp_path / "ia3", peft_type="IA3"), model="tiny", name="alice")
    with pytest.raises(ValueError, match="':' separates"):
        store.push(make_lora_dir(tmp_path / "ok2"), model="tiny", name="tiny:alice")
    assert _files_under(store, "tiny/adapters") == [] and store.list() == []


def test_rm_unlists_then_removes_and_the_name_can_be_pushed_again(store_url, lora, tmp_path):
    store = AdapterStore(store_url)
    first = store.push(lora, model="tiny", name="alice")
    other = store.push(make_lora_dir(tmp_path / "b", seed=3), model="tiny", name="bob")
    assert store.rm("tiny", "alice") == first
    assert store.names("tiny") == ["bob"] and [i.name for i in store.list()] == ["bob"]
    assert _files_under(store, "tiny/adapters") == sorted([
        "bob/adapter.json", f"bob/{other.push_id}/adapter_config.json", f"bob/{other.push_id}/adapter_model.safetensors"])
    with pytest.raises(AdapterNotFound):
        store.rm("tiny", "alice")
    again = store.push(lora, model="tiny", name="alice")
    assert again.push_id != first.push_id and store.names("tiny") == ["alice", "bob"]


def test_snapshot_listing_and_gc_leave_adapters_alone(store_url, lora):
    store = AdapterStore(store_url)
    info = store.push(lora, model="tiny", name="alice")
    _put(store, "tiny/adapters/bob/20260101T000000Z-0badf00d/adapter_config.json", b"{}")
    snaps = SnapshotStore(store_url)
    assert [(i.model, i.error) for i in snaps.list()] == [("tiny", None)]
    assert snaps.resolve("tiny/latest").snapshot_id != "adapters"
    assert snaps.gc(older_than_s=0) == []
    assert len(_files_under(store, "tiny/adapters")) == 4 and store.get("tiny", "alice") == info
    with pytest.raises(ValueError, match="'adapters' is reserved"):
        snaps.create_writer("tiny", "adapters", tp_size=1)


def test_adapter_gc_removes_only_dead_push_dirs(store_url, lora):
    store = AdapterStore(store_url)
    info = store.push(lora, model="tiny", name="alice")
    dead = "tiny/adapters/alice/20260101T000000Z-0badf00d"
    foreign = "tiny/adapters/carol/20260101T000000Z-0000beef"
    for rel, f in ((dead, "adapter_config.json"), (dead, "adapter_model.safetensors"), (foreign, "notes.txt")):
        _put(store, f"{rel}/{f}", b"x")
    assert store.gc(older_than_s=3600) == []  # too young
    assert store.gc(older_than_s=0, dry_run=True) == [f"{store_url}/{dead}"]
    assert len(_files_under(store, "tiny/adapters")) == 6  # dry run touched nothing
    assert store.gc(older_than_s=0) == [f"{store_url}/{dead}"]
    assert _files_under(store, "tiny/adapters") == sorted([
        "alice/adapter.json", f"alice/{info.push_id}/adapter_config.json",
        f"alice/{info.push_id}/adapter_model.safetensors", "carol/20260101T000000Z-0000beef/notes.txt"])
    assert store.get("tiny", "alice") == info


def test_a_push_whose_files_were_collected_while_stalled_takes_its_commit_back(store_url, lora, monkeypatch):
    store = AdapterStore(store_url)
    real = fsutil.publish_exclusive

    def gc_ran_first(fs, path, data):  # `adapter gc` removed the stalled push's dir just before its commit
        push_id = json.loads(data)["push_id"]
        store._remove_dir(fsutil.join(store.root, "tiny/adapters/alice", push_id))
        real(fs, path, data)

    monkeypatch.setattr(fsutil, "publish_exclusive", gc_ran_first)
    with pytest.raises(AdapterError, match="lost its files before its commit"):
        store.push(lora, model="tiny", name="alice")
    assert store.names("tiny") == [] and _files_under(store, "tiny/adapters") == []


def test_an_s3_fetch_is_three_gets_and_no_head(moto_server, s3_bucket_url, tiny_dir, lora, tmp_path):
    """A cold adapter on S3 costs adapter.json's GET, then both files' GETs at once: no HEAD (s3fs
    asks for the size first unless told the read is whole), no LIST."""
    create_offline_snapshot(tiny_dir, tp=1, store_url=s3_bucket_url, name="tiny")
    AdapterStore(s3_bucket_url).push(lora, model="tiny", name="alice")
    store = AdapterStore(s3_bucket_url)
    store.warm("tiny")  # starts the client (and checks the adapters dir once)
    calls: list[str] = []
    store.fs.s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    info, local = store.fetch("tiny", "alice", tmp_path / "cache")
    assert sorted(calls) == ["GetObject"] * 3, calls
    assert (local / "adapter_model.safetensors").read_bytes() == (lora / "adapter_model.safetensors").read_bytes()
    # the same whole reads name a missing file by its exception, per path
    got = fsutil.read_whole(store.fs, [fsutil.join(store.root, "tiny/adapters/alice/adapter.json"),
                                       fsutil.join(store.root, "tiny/adapters/nobody/adapter.json")])
    assert [type(v).__name__ for v in got.values()] == ["bytes", "FileNotFoundError"]
    with pytest.raises(FileNotFoundError):
        fsutil.cat_whole(store.fs, fsutil.join(store.root, "tiny/adapters/nobody/adapter.json"))
