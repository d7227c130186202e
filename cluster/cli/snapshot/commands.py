"""`thawline snapshot ...`: create, ls, inspect, verify, rm, gc, fetch, restore.

Snapshot references are full URLs `<store-url>/<model>/<id>`; `<model>/latest` works wherever an id
does. Store URLs are file://, memory://, s3:// or gs:// (or a local path); other fsspec schemes
(http://, ...) are refused unless THAWLINE_ALLOW_ANY_SCHEME=1. Results go to stdout, progress bars and errors to stderr. Heavy imports (torch, vllm) happen
inside the commands that need them.
"""
from __future__ import annotations

import json
import time
from enum import Enum
from typing import Optional

import typer

from cluster.cli.errors import CLIError, one_line_errors
from cluster.cli.snapshot.helpers import confirm_delete, parse_engine_args, require_store, run_gc

app = typer.Typer(
    help="Create, list, inspect, verify, remove and restore tensor-parallel snapshots on any fsspec URL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Engine(str, Enum):
    vllm = "vllm"
    none = "none"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _store_for(snapshot_url: str):
    from snapshots.store import SnapshotStore

    store, ref = SnapshotStore.for_snapshot(snapshot_url)
    return store, store.resolve(ref)


@app.command()
@one_line_errors
def create(
    hf_dir: str = typer.Argument(..., help="HF model dir (config.json + safetensors)."),
    tp: int = typer.Option(1, "--tp", min=1, help="Tensor-parallel size: one rank per shard."),
    store: str = typer.Option(..., "--store", help="Store URL: file://..., s3://bucket/prefix, memory://..., gs://..."),
    name: str = typer.Option(..., "--name", help="Model name in the store."),
    engine: Engine = typer.Option(Engine.vllm, "--engine", help="vllm: boot vLLM and dump each worker's weights; none: offline TP split of Llama safetensors."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Engine dtype (vllm engine only)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Engine max model length (vllm engine only)."),
    snapshot_id: Optional[str] = typer.Option(None, "--id", help="Snapshot id (default: UTC timestamp + random suffix)."),
    part_size_mb: int = typer.Option(2048, "--part-size-mb", min=1, help="Part file size limit in MiB (engine none)."),
    engine_arg: Optional[list[str]] = typer.Option(
        None, "--engine-arg", metavar="KEY=VALUE",
        help="Any vLLM engine argument, repeatable (quantization=fp8, gpu_memory_utilization=0.85); VALUE is "
             "parsed as JSON when it is JSON, else a string. Recorded in the snapshot's engine state."),
    on_cluster: bool = typer.Option(False, "--on-cluster", help="Run the capture as a Ray task on a GPU node of "
                                    "the cluster (num_gpus=--tp plus --accelerator-type): HF_DIR is then a path on "
                                    "that node or an fsspec URL (s3://...) fetched onto it."),
    address: str = typer.Option("auto", "--address", help="Ray address for --on-cluster (auto: the cluster this node is in)."),
    accelerator_type: Optional[str] = typer.Option(None, "--accelerator-type", help="--on-cluster: the GPU type "
                                                   "(a node type's accelerator_type resource, e.g. H100, L40S)."),
    resources: Optional[str] = typer.Option(None, "--resources", help="--on-cluster: JSON task resources replacing "
                                            'the default, e.g. {"num_gpus": 4, "resources": {"my_type": 1}}.'),
) -> None:
    """Create a snapshot; prints its full URL (<store>/<name>/<id>) as the last stdout line."""
    from pathlib import Path

    if on_cluster:
        from cluster.cli.snapshot.on_cluster import create_on_cluster, task_options

        argv = _on_cluster_argv(tp, store, name, engine, dtype, max_model_len, snapshot_id, engine_arg or [])
        typer.echo(create_on_cluster(hf_dir, argv, address=address, options=task_options(tp, accelerator_type, resources),
                                     on_line=lambda line: typer.echo(line, err=True)))
        return
    if not Path(hf_dir).is_dir():
        raise FileNotFoundError(f"model dir not found: {hf_dir}")
    extra = parse_engine_args(engine_arg)
    for key, flag in (("dtype", "--dtype"), ("max_model_len", "--max-model-len"), ("tensor_parallel_size", "--tp")):
        if key in extra:
            raise CLIError(f"--engine-arg {key}=...: use {flag}")
    if engine is Engine.vllm:
        if snapshot_id is not None:
            raise ValueError("--id applies to --engine none only (engine snapshots get a generated id)")
        url = _create_engine(hf_dir, tp, store, name, dtype, max_model_len, extra)
    else:
        if dtype is not None or max_model_len is not None or extra:
            raise ValueError("--dtype, --max-model-len and --engine-arg apply to --engine vllm only")
        url = _create_offline(hf_dir, tp, store, name, snapshot_id, part_size_mb)
    typer.echo(url)


def _on_cluster_argv(tp: int, store: str, name: str, engine: Engine, dtype: str | None, max_model_len: int | None,
                     snapshot_id: str | None, engine_arg: list[str]) -> list[str]:
    """`thawline snapshot create` arguments for the same capture run as a task on the cluster."""
    argv = ["--tp", str(tp), "--store", store, "--name", name, "--engine", engine.value]
    argv += [x for flag, v in (("--dtype", dtype), ("--max-model-len", max_model_len), ("--id", snapshot_id))
             if v is not None for x in (flag, str(v))]
    for item in engine_arg:
        argv += ["--engine-arg", item]
    if engine is Engine.vllm and not any(a.startswith("distributed_executor_backend=") for a in engine_arg):
        # vLLM's own workers on the task's GPUs: a Ray executor would ask the cluster for
        # the GPUs this task already holds.
        argv += ["--engine-arg", "distributed_executor_backend=mp"]
    return argv


def _create_engine(hf_dir: str, tp: int, store: str, name: str, dtype: str | None, max_model_len: int | None,
                   extra: dict) -> str:
    # Lazy: importing vLLM takes seconds and is only needed for this path.
    from cluster.cli.snapshot.progress import engine_create_progress
    from snapshots.vllm_engine.capture import create_engine_snapshot

    with engine_create_progress() as on_phase:
        return create_engine_snapshot(hf_dir, tp=tp, store_url=store, name=name, dtype=dtype,
                                      max_model_len=max_model_len, on_phase=on_phase, **extra)


def _create_offline(hf_dir: str, tp: int, store: str, name: str, snapshot_id: str | None, part_size_mb: int) -> str:
    from snapshots.offline import create_offline_snapshot
    from snapshots.progress import byte_bar

    with byte_bar(f"create tp={tp}") as bar:
        return create_offline_snapshot(hf_dir, tp=tp, store_url=store, name=name, snapshot_id=snapshot_id,
                                       part_bytes=part_size_mb << 20, progress=bar, on_total=bar.set_total)


@app.command("ls")
@one_line_errors
def ls_(
    store: str = typer.Argument(..., help="Store URL."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List committed snapshots (uncommitted leftovers are never shown; see `gc`). A store URL that
    does not exist is an error (exit 1); an existing empty store prints "no snapshots" (exit 0)."""
    from dataclasses import asdict

    from snapshots.store import SnapshotStore

    st = SnapshotStore(store)
    try:
        require_store(st)
        infos = st.list()
    except CLIError:
        raise
    except Exception as e:      # unreachable host, no credentials, denied: one line naming the store
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(f"cannot read store {store}: {msg}") from None
    if as_json:
        typer.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    if not infos:
        typer.echo(f"no snapshots in {store}", err=True)
        return
    typer.echo(f"{'MODEL/ID':<48} {'TP':>3} {'SIZE':>11} {'ENGINE':<7} CREATED (UTC)")
    for i in infos:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(i.created_at)) if i.created_at else "-"
        line = f"{i.model + '/' + i.snapshot_id:<48} {i.tp_size:>3} {_human(i.total_bytes):>11} {i.engine:<7} {created}"
        if i.error:
            line += f"  ! {i.error}"
        typer.echo(line)


@app.command()
@one_line_errors
def inspect(
    snapshot: str = typer.Argument(..., help="<store>/<model>/<id|latest>."),
    as_json: bool = typer.Option(True, "--json", hidden=True, help="Accepted for symmetry: the output is JSON."),
) -> None:
    """Print snapshot.json (format version checked) as JSON."""
    store, ref = _store_for(snapshot)
    meta = store.inspect(ref)
    out = json.loads(meta.model_dump_json())
    out["url"] = ref.url
    typer.echo(json.dumps(out, indent=2))


@app.command()
@one_line_errors
def verify(
    snapshot: str = typer.Argument(..., help="<store>/<model>/<id|latest>."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Reader threads."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON ({ok, url, ...}; on a mismatch ok=false with rank/tensor, exit 1)."),
) -> None:
    """Re-hash every tensor of every rank; non-zero exit naming rank and tensor on a mismatch."""
    from snapshots.errors import SnapshotCorrupt
    from snapshots.progress import byte_bar

    store, ref = _store_for(snapshot)
    meta = store.inspect(ref)
    try:
        with byte_bar("verify", total=meta.total_bytes) as bar:
            report = store.verify(ref, progress=bar, threads=threads)
    except SnapshotCorrupt as exc:
        if not as_json:
            raise
        typer.echo(json.dumps({"ok": False, "url": ref.url, "error": str(exc),
                               "rank": getattr(exc, "rank", None), "tensor": getattr(exc, "tensor", None)}))
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps({"ok": True, "url": ref.url, "ranks": report.ranks, "tensors": report.tensors,
                               "bytes": report.bytes, "seconds": round(report.seconds, 4)}))
        return
    typer.echo(f"ok {ref.url}: {report.ranks} ranks, {report.tensors} tensors, {_human(report.bytes)} in {report.seconds:.2f}s")


@app.command("rm")
@one_line_errors
def rm_(
    snapshot: str = typer.Argument(..., help="<store>/<model>/<id|latest>."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be removed."),
) -> None:
    """Delete a snapshot (uncommits it first, then removes its files); asks first unless --yes."""
    store, ref = _store_for(snapshot)
    store.inspect(ref)  # a snapshot that is not there is an error before any question
    if dry_run:
        typer.echo(f"would remove {ref.url}")
        return
    confirm_delete([ref.url], yes=yes)
    store.delete(ref)
    typer.echo(f"removed {ref.url}")


@app.command()
@one_line_errors
def gc(
    store: str = typer.Argument(..., help="Store URL."),
    older_than: float = typer.Option(3600.0, "--older-than", min=0, help="Only remove leftovers whose writer's last heartbeat (every 30 s while it runs) is older than this many seconds."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be removed."),
) -> None:
    """Remove leftovers of writers that died before committing (or while publishing snapshot.json).

    Only dirs proven to be Thawline's are touched: <model>/<id> with a claim our writer made for
    exactly that path, no snapshot.json and no file gc does not recognise; anything else (a wrong
    URL, foreign files) is left alone. In a committed dir only a stale `snapshot.json.tmp-*` goes.
    """
    from snapshots.store import SnapshotStore

    st = SnapshotStore(store)
    require_store(st)
    run_gc(st, older_than=older_than, yes=yes, dry_run=dry_run, label="gc", what="leftover(s)",
           noun="snapshot dir(s)")


@app.command()
@one_line_errors
def fetch(
    snapshot: str = typer.Argument(..., help="<store>/<model>/<id|latest>."),
    rank: Optional[list[int]] = typer.Option(None, "--rank", help="Rank(s) to fetch (default: all)."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Node-local cache dir (default $THAWLINE_CACHE_DIR, else $XDG_CACHE_HOME/thawline)."),
) -> None:
    """Download a snapshot into the node-local cache (once per node); prints the local path."""
    from snapshots.cache import SnapshotCache
    from snapshots.progress import byte_bar

    store, ref = _store_for(snapshot)
    meta = store.inspect(ref)
    ranks = rank or None
    total = sum(meta.rank_info(r).nbytes for r in (ranks or range(meta.tp_size)))
    with byte_bar("fetch", total=total) as bar:
        res = SnapshotCache(cache_dir).fetch(ref.url, ranks=ranks, progress=bar)
    state = f"fetched {_human(res.bytes)} in {res.seconds:.2f}s" if res.fetched else "already cached" if not store.is_local else "local, read in place"
    typer.echo(f"{state}", err=True)
    typer.echo(str(res.path))


@app.command()
@one_line_errors
def restore(
    snapshot: str = typer.Argument(..., help="<store>/<model>/<id|latest>."),
    rank: int = typer.Option(0, "--rank", min=0, help="Tensor-parallel rank to restore."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Reader threads."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checksum verification."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Read remote stores directly instead of through the node-local cache."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Node-local cache dir (default $THAWLINE_CACHE_DIR, else $XDG_CACHE_HOME/thawline)."),
) -> None:
    """Restore one rank into host memory and print its timings."""
    from snapshots.restore import restore as do_restore

    r = do_restore(snapshot, rank, verify=not no_verify, threads=threads, use_cache=not no_cache, cache_dir=cache_dir)
    t = r.timings
    typer.echo(
        f"rank {rank} of {r.url}: {len(r.tensors)} tensors, {_human(t.bytes)} in {t.seconds:.3f}s = {t.gbps:.2f} GB/s "
        f"(fetch {t.fetch_s:.3f}s, read {t.read_s:.3f}s, verify {t.verify_s:.3f}s, threads {t.threads}"
        f"{', from node cache' if t.cached else ''}{', verify off' if no_verify else ''})"
    )
