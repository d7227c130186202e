"""Restore benchmark: per-rank snapshot restore vs the raw-read limit vs a naive safetensors loader.

Setup (reused across runs): the generated ~1.5 GB bf16 bench Llama in /tmp/thawline-bench/models/bench,
a TP=2 snapshot of it on file:// (offline split), page cache warmed by reading every byte once.

Contenders, per rank, each timed until ALL of that rank's bytes sit in process memory:
  thawline   snapshots.restore.restore(url, rank, verify=False): preadv from a thread pool into one
             fresh buffer; tensors are views. Bytes are in memory once the reads return.
  +verify    the same with xxh3 checksum verification on (the default on the cold path).
  raw read   the limit: os.preadv of exactly the same part-file bytes into a fresh buffer allocated
             the same way as restore's (snapshots/hostbuf.py, THAWLINE_HOST_ALLOC), same threads
             and chunk size, and nothing else (no manifest, no views). A second row uses the other
             allocation strategy, to show what that choice is worth on this machine.
  safetensors  safetensors.torch.load_file of every HF shard, then slicing out this rank's shard
             into its own contiguous tensors with .clone(). load_file maps the file lazily (mmap),
             so the clone is what forces every byte of the rank into memory: the loader is done
             when the clones are.
S3 (informational): rank 0 from a moto server on loopback, direct ranged reads (no cache) and a cold
node-cache fetch + restore.

Prints a table, then one JSON line:
{"bench":"restore","bytes":..,"thawline_gbps":..,"raw_read_gbps":..,"ratio_to_raw":..,"thawline_s":..,
 "safetensors_s":..,"speedup_vs_safetensors":..}
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402,F401  (imported up front: its import time must not land in any timing)
from filelock import FileLock  # noqa: E402

from snapshots import hostbuf, tp_split  # noqa: E402
from snapshots.offline import create_offline_snapshot, safetensors_files  # noqa: E402
from snapshots.rankio import CHUNK_BYTES, default_threads  # noqa: E402
from snapshots.restore import restore  # noqa: E402
from snapshots.store import SnapshotStore  # noqa: E402
from cluster.models.tinyllama import ensure_llama  # noqa: E402


def ensure_snapshot(model_dir: Path, store_url: str, tp: int) -> str:
    store = SnapshotStore(store_url)
    name = f"bench-tp{tp}"
    with FileLock(str(Path(store.root) / f".{name}.lock") if store.is_local else "/tmp/thawline-bench/.snap.lock"):
        for info in reversed(store.list()):
            meta = store.inspect(f"{info.model}/{info.snapshot_id}")
            if info.model == name and meta.model_revision == str(model_dir.resolve()):
                return info.url
        print(f"creating the TP={tp} snapshot in {store_url} ...", file=sys.stderr)
        return create_offline_snapshot(model_dir, tp=tp, store_url=store_url, name=name)


def warm(paths: list[Path]) -> None:
    buf = bytearray(64 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def raw_read(files: list[tuple[Path, int]], threads: int, alloc: str) -> int:
    """The limit: preadv the same files into one fresh buffer, same threads and chunking.

    With restore's own allocation strategy (snapshots/hostbuf.py) the ratio measures restore's
    overhead; the other strategy is reported as a separate row.
    """
    total = sum(n for _, n in files)
    buf = hostbuf.allocate(total, strategy=alloc)
    mv = memoryview(buf.numpy())
    jobs, dest = [], 0
    fds = [os.open(p, os.O_RDONLY) for p, _ in files]
    for fd, (_, n) in zip(fds, files):
        for off in range(0, n, CHUNK_BYTES):
            jobs.append((fd, off, min(n, off + CHUNK_BYTES), dest + off))
        dest += n

    def one(job):
        fd, start, end, d = job
        got = 0
        while got < end - start:
            got += os.preadv(fd, [mv[d + got: d + end - start]], start + got)
        return got

    try:
        with ThreadPoolExecutor(threads) as pool:
            return sum(pool.map(one, jobs))
    finally:
        for fd in fds:
            os.close(fd)


def naive_safetensors(model_dir: Path, tp: int, rank: int) -> int:
    from safetensors.torch import load_file

    out, n = {}, 0
    for f in safetensors_files(model_dir):
        for name, t in load_file(str(f)).items():
            shard = t[tp_split.rank_slices(name, tuple(t.shape), tp, rank)].clone()  # forces the bytes in
            out[name] = shard
            n += shard.numel() * shard.element_size()
    return n


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    res = fn()
    return time.perf_counter() - t0, res


def s3_informational(snapshot_url: str, rank: int, threads: int, work: Path) -> dict:
    """Rank `rank` from S3 via a moto server on loopback: direct ranged reads, and a cold cache fetch."""
    import fsspec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        store, ref = SnapshotStore.for_snapshot(snapshot_url)
        r = store.resolve(ref)
        meta = store.inspect(r)
        s3 = fsspec.filesystem("s3", use_listings_cache=False)
        s3.mkdir("bench")
        dst = f"bench/{r.model}/{r.snapshot_id}"
        # Upload only what rank `rank` needs (the other rank's parts are never read).
        for rel in ["manifest.parquet", *meta.files, *[p.path for p in meta.ranks[rank].parts], "snapshot.json"]:
            # One PUT per file (chunksize > file): moto's multipart path failed intermittently here
            # under CPU contention ("upload does not exist").
            size = os.path.getsize(os.path.join(r.path, rel))
            s3.put_file(os.path.join(r.path, rel), f"{dst}/{rel}", chunksize=max(size, 5 << 20))
        url = f"s3://{dst}"
        direct, _ = timed(lambda: restore(url, rank, verify=False, use_cache=False))
        cache_dir = work / f"s3-cache-{os.getpid()}"
        cold = restore(url, rank, verify=True, cache_dir=str(cache_dir))
        warm_r = restore(url, rank, verify=True, cache_dir=str(cache_dir))
        import shutil

        shutil.rmtree(cache_dir, ignore_errors=True)
        return {
            "bytes": cold.timings.bytes,
            "direct_s": direct,
            "cold_cache_s": cold.timings.seconds,
            "cold_fetch_s": cold.timings.fetch_s,
            "warm_cache_s": warm_r.timings.seconds,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.5)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="reader threads (default: one per core, >= 2)")
    ap.add_argument("--work-dir", default="/tmp/thawline-bench")
    ap.add_argument("--no-s3", action="store_true", help="skip the informational S3 (moto) rows")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work_dir)
    model_dir = ensure_llama(work / "models" / "bench", preset="bench", size_gb=args.size_gb)
    store_url = (work / "snapshots").as_uri()
    (work / "snapshots").mkdir(parents=True, exist_ok=True)
    url = ensure_snapshot(model_dir, store_url, args.tp)
    store, ref = SnapshotStore.for_snapshot(url)
    r = store.resolve(ref)
    meta = store.inspect(r)
    threads = args.threads or default_threads()

    load0 = os.getloadavg()[0]
    warm([*safetensors_files(model_dir), *[Path(r.path) / p.path for ri in meta.ranks for p in ri.parts]])

    alloc = hostbuf.default_strategy()
    other = next(a for a in hostbuf.STRATEGIES if a != alloc)
    samples: dict[str, list[float]] = {"thawline": [], "thawline+verify": [], "raw read": [],
                                       f"raw read, {other} buf": [], "safetensors": []}
    def run_thawline(rank, verify):
        res = restore(url, rank, verify=verify, threads=threads)
        assert res.timings.bytes == rank_bytes[rank]  # all of the rank's bytes were read in

    def run_raw(rank, how):
        assert raw_read(rank_files[rank], threads, how) == rank_bytes[rank]

    rank_files = {rank: [(Path(r.path) / p.path, p.nbytes) for p in meta.ranks[rank].parts] for rank in range(args.tp)}
    rank_bytes = {rank: sum(n for _, n in files) for rank, files in rank_files.items()}
    contenders = [
        ("thawline", lambda rank: run_thawline(rank, False)),
        ("thawline+verify", lambda rank: run_thawline(rank, True)),
        ("raw read", lambda rank: run_raw(rank, alloc)),
        (f"raw read, {other} buf", lambda rank: run_raw(rank, other)),
        ("safetensors", lambda rank: naive_safetensors(model_dir, args.tp, rank)),
    ]
    step = 0
    for _ in range(args.reps):
        for rank in range(args.tp):
            # Interleaved, and the order rotates every round: on this VM a fresh buffer's cost depends
            # on what ran just before it (recently freed memory), so no contender may always follow
            # the same one.
            order = contenders[step % len(contenders):] + contenders[:step % len(contenders)]
            step += 1
            for name, fn in order:
                t0 = time.perf_counter()
                fn(rank)
                samples[name].append(time.perf_counter() - t0)

    nbytes = rank_bytes[0]
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\nrestore bench: {model_dir.name} model, TP={args.tp}, rank bytes {nbytes / 1e9:.3f} GB, "
          f"threads {threads}, host alloc {alloc}, {args.reps} reps x {args.tp} ranks, page cache warm, medians; "
          f"load average at start {load0:.1f} on {os.cpu_count()} cores")
    print(f"{'contender':<22} {'seconds':>9} {'GB/s':>8} {'vs raw':>8}")
    for k in samples:
        print(f"{k:<22} {med[k]:>9.3f} {nbytes / med[k] / 1e9:>8.2f} {med['raw read'] / med[k]:>8.2f}")
    if not args.no_s3:
        try:
            s3 = s3_informational(url, 0, threads, work)
        except Exception as exc:  # noqa: BLE001 - informational rows must not sink the main result
            s3 = None
            print(f"\nS3 via moto (informational): skipped, {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if not args.no_s3 and s3:
        print(f"\nS3 via moto on loopback (informational), rank 0, {s3['bytes'] / 1e9:.3f} GB:")
        print(f"{'direct ranged reads':<28} {s3['direct_s']:>8.3f} s  {s3['bytes'] / s3['direct_s'] / 1e9:.2f} GB/s")
        print(f"{'cold: fetch to node cache':<28} {s3['cold_cache_s']:>8.3f} s  (fetch {s3['cold_fetch_s']:.3f} s)")
        print(f"{'warm: from node cache':<28} {s3['warm_cache_s']:>8.3f} s")
    result = {
        "bench": "restore",
        "bytes": nbytes,
        "thawline_gbps": round(nbytes / med["thawline"] / 1e9, 3),
        "raw_read_gbps": round(nbytes / med["raw read"] / 1e9, 3),
        "ratio_to_raw": round(med["raw read"] / med["thawline"], 3),
        "thawline_s": round(med["thawline"], 4),
        "safetensors_s": round(med["safetensors"], 4),
        "speedup_vs_safetensors": round(med["safetensors"] / med["thawline"], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
