"""`make demo`: Thawline end to end on one machine, in a few minutes, with nothing downloaded.

Starts a local Ray, generates the tiny model, snapshots it (the offline TP=2 split with a
restore table, then the engine path), deploys the gateway and the LLM app scaled to zero, runs
a scripted session (cold request with its timeline, warm request, streaming, fallback from a
failing fake hosted provider, a rate-limited burst, the cost ledger, the openai SDK and the
in-cluster handle), then stops Ray, or with --keep leaves Ray, the gateway and the LLM app
running and prints what to try next.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # cluster/demo/__main__.py -> the repository

# Nothing may be fetched from a model hub, and nothing phones home.
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_k, _v)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cluster.demo", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / ".demo",
                   help="Where the model, snapshots, cache and ledger go (default: .demo/, git-ignored).")
    p.add_argument("--tp", type=int, default=2, help="TP degree of the offline snapshot/restore step (default 2).")
    p.add_argument("--serve-tp", type=int, default=1,
                   help="TP degree of the served model (default 1: TP=2 decode on 2 cores is slow).")
    p.add_argument("--fresh-snapshot", action="store_true",
                   help="Make a new engine snapshot even if an earlier run left one in the workdir.")
    p.add_argument("--keep", action="store_true",
                   help="Leave Ray (started as `ray start --head`: GCS :6379, dashboard :8265), the gateway "
                        "(:8000) and the LLM app running, for `thawline chat|status|usage`; `ray stop` ends it.")
    p.add_argument("--snapshot-only", action="store_true",
                   help="Only the snapshot half: generate, snapshot at --tp, restore with checksums, print the table.")
    return p.parse_args(argv)


def serving_engine_args() -> dict:
    """dtype / max_model_len the served app runs with (local-cpu.yaml's engine_overrides): the
    snapshot must be made with the same ones, or the restored weights do not fit the model."""
    import yaml

    from cluster.demo.stack import CONFIGS

    local = yaml.safe_load((CONFIGS / "local-cpu.yaml").read_text())["applications"][0]["args"]
    o = local.get("engine_overrides", {})
    return {k: o[k] for k in ("dtype", "max_model_len") if k in o}


def start_engine_snapshot(hf_dir: Path, store_url: str, tp: int, engine_args: dict, log_dir: Path):
    """Start `thawline snapshot create --engine vllm` in a subprocess, exactly as an operator runs
    it: vLLM boots once at the target TP degree and every worker dumps its own shard + the engine
    state. It runs in the background while Ray starts (output to files: vLLM logs a lot)."""
    cmd = [sys.executable, "-m", "cluster.cli.main", "snapshot", "create", str(hf_dir), "--tp", str(tp),
           "--store", store_url, "--name", "tiny", "--engine", "vllm"]
    if "dtype" in engine_args:
        cmd += ["--dtype", str(engine_args["dtype"])]
    if "max_model_len" in engine_args:
        cmd += ["--max-model-len", str(engine_args["max_model_len"])]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    if tp == 2:
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    out, err = (log_dir / "snapshot-create.out").open("w"), (log_dir / "snapshot-create.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, text=True)
    out.close()
    err.close()
    return proc


def finish_engine_snapshot(proc, log_dir: Path, timeout_s: float = 600) -> str:
    """Wait for the snapshot subprocess; its URL is the last stdout line."""
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise RuntimeError(f"snapshot create took over {timeout_s:.0f}s (log: {log_dir / 'snapshot-create.log'})")
    lines = [ln for ln in (log_dir / "snapshot-create.out").read_text().splitlines() if ln.strip()]
    if code != 0 or not lines or "://" not in lines[-1]:
        errs = (log_dir / "snapshot-create.log").read_text().strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"snapshot create failed (exit {code}): {errs[-1]} (log: {log_dir / 'snapshot-create.log'})")
    return lines[-1].strip()


def reusable_engine_snapshot(store_url: str, tp: int, dtype: str | None) -> str | None:
    """The newest committed engine (not offline) snapshot of the demo model at this TP degree
    and dtype, if an earlier run made one."""
    from snapshots.store import SnapshotStore

    store = SnapshotStore(store_url)
    found = [i for i in store.list()
             if i.model == "tiny" and i.engine not in ("none", "?") and i.tp_size == tp and not i.error
             and (dtype is None or str(store.inspect(f"tiny/{i.snapshot_id}").dtype).removeprefix("torch.") == dtype)]
    return max(found, key=lambda i: i.created_at).url if found else None


def snapshot_half(args, steps, work: Path):
    from cluster.demo.snapshot import ensure_tiny_model, offline_snapshot, restore_ranks, restore_table
    from cluster.demo.ui import console, note

    store_url = (work / "snapshots").as_uri()
    with steps.step("Generate the tiny Llama (deterministic, nothing downloaded)"):
        hf_dir = ensure_tiny_model(work / "models" / "tiny")
        size = sum(f.stat().st_size for f in hf_dir.iterdir() if f.is_file())
        note(f"{hf_dir} ({size / 1e6:.1f} MB)")
    with steps.step(f"Snapshot format: offline TP={args.tp} split to {store_url}, restore every rank with checksums"):
        url = offline_snapshot(hf_dir, store_url, name=f"tiny-tp{args.tp}-offline", tp=args.tp)
        rows = restore_ranks(url, args.tp, verify=True)
    console.print(restore_table(rows, f"Restore of {url.rsplit('/', 2)[-2]}/{url.rsplit('/', 1)[-1]}"))
    return hf_dir, store_url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from cluster.demo.ui import Steps, console

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # The node-local snapshot cache of this demo lives in the workdir, never in $HOME.
    from snapshots.cache import CACHE_DIR_ENV

    os.environ.setdefault(CACHE_DIR_ENV, str(work / "cache"))
    steps = Steps()
    steps.serving_up = False  # set once the gateway answers: what --keep leaves behind
    console.print(f"[bold]Thawline demo[/] [dim](workdir {work})[/]")
    rc = run_demo(args, steps, work, console)
    # Every run ends with the --keep hint (or, after --keep, the next commands and `ray stop`).
    print_next_steps(console, kept=args.keep and not args.snapshot_only and steps.serving_up,
                     started_keep=args.keep and not args.snapshot_only)
    return rc


def run_demo(args, steps, work: Path, console) -> int:
    from rich.markup import escape

    try:
        hf_dir, store_url = snapshot_half(args, steps, work)
        if args.snapshot_only:
            console.print(f"[bold green]done[/] in {steps.elapsed():.1f}s")
            return 0
        serving_half(args, steps, work, hf_dir, store_url)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    except Exception as exc:  # noqa: BLE001 - the demo's single error boundary: one line, exit 1
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(first)}")
        return 1
    if steps.failed:
        console.print(f"[bold red]demo finished with {len(steps.failed)} failed step(s)[/] in {steps.elapsed():.0f}s: "
                      + "; ".join(steps.failed))
        return 1
    console.print(f"[bold green]demo finished[/] in {steps.elapsed():.0f}s")
    return 0


def print_next_steps(console, *, kept: bool, started_keep: bool = False) -> None:
    """Every run ends with this: with --keep, what to try on the stack left running (the README's
    commands, same keys) and how to stop it; without, how to get such a stack."""
    from cluster.demo import stack as st

    if not kept and started_keep:
        console.print("The --keep run did not finish; the Ray cluster it started may still be up: ray stop",
                      markup=False, highlight=False)
    if not kept:
        console.print("[dim]tip: `python -m cluster.demo --keep` leaves Ray, the gateway and the model running "
                      "to try `thawline chat`, `thawline status` and `thawline usage` on.[/]")
        return
    console.print(
        "The stack is still running (Ray GCS 127.0.0.1:{gcs}, gateway http://127.0.0.1:{http}/v1, "
        "dashboard http://127.0.0.1:{dash}). Try:\n"
        "  source .venv/bin/activate                   # puts `thawline` on PATH\n"
        "  export THAWLINE_ADMIN_KEY={admin} THAWLINE_API_KEY={key}\n"
        "  thawline chat tiny -m 'Once upon a time'    # or without -m: interactive\n"
        "  thawline status                             # apps, replicas, cold/warm, node caches\n"
        "  thawline status --timeline tiny             # the last cold start, phase by phase\n"
        "  thawline usage --group-by route             # the cost ledger\n"
        "  thawline keys ls                            # client keys (create/set/rotate/revoke: README)\n"
        "Stop it with: ray stop".format(gcs=st.KEEP_GCS_PORT, http=st.KEEP_HTTP_PORT, dash=st.KEEP_DASHBOARD_PORT,
                                        admin=st.ADMIN_KEY, key=st.DEMO_KEY),
        markup=False, highlight=False)


def serving_half(args, steps, work: Path, hf_dir: Path, store_url: str) -> None:
    from cluster.demo import stack as st
    from cluster.demo.adapters import push_adapters
    from cluster.demo.ui import note
    from testkit.fake_providers import FakeServer

    st.demo_env()
    if args.keep:
        # the kept cluster's replicas read these (inherited from `ray start`), as in the README
        os.environ.setdefault("THAWLINE_DEMO_DIR", str(work))
        os.environ.setdefault("THAWLINE_ADMIN_KEY", st.ADMIN_KEY)

    engine_args = serving_engine_args()
    earlier = None if args.fresh_snapshot else reusable_engine_snapshot(store_url, args.serve_tp,
                                                                        engine_args.get("dtype"))
    proc = None if earlier else start_engine_snapshot(hf_dir, store_url, args.serve_tp, engine_args, work)
    fake = None
    ray_started = False
    try:
        with steps.step("Start a local Ray and a loopback FAKE hosted provider"
                        + ("" if earlier else " (the engine snapshot is made meanwhile)")):
            fake = FakeServer(st.free_port()).start()
            ray_info = st.start_ray_cluster() if args.keep else st.start_ray()
            ray_started = True
            note(f"Ray dashboard {ray_info.dashboard_url}; fake OpenAI-style provider {fake.openai_url} (not a real API)")
        with steps.step(f"Snapshot through the engine path (vLLM boots once at TP={args.serve_tp})"):
            snap_url = _serving_snapshot(args, earlier, proc, work, hf_dir, store_url)
        steps.soft("Push two users' LoRA adapters next to the snapshot", push_adapters, hf_dir, snap_url, work)
        http_port = st.KEEP_HTTP_PORT if args.keep else st.free_port()
        base_url = f"http://127.0.0.1:{http_port}/v1"
        with steps.step("Deploy the gateway and the LLM app, scaled to zero (validate, then `serve deploy`)"):
            client = _deploy(work, fake.openai_url, snap_url, http_port, base_url, ray_info.dashboard_url)
            steps.serving_up = True
        _requests(steps, client, fake, base_url)
    finally:
        if proc is not None and proc.poll() is None:  # interrupted before the snapshot finished
            proc.kill()
            proc.wait(timeout=30)
        keep = args.keep and steps.serving_up
        with steps.step("Leave the stack running (--keep)" if keep else "Stop Ray"):
            if ray_started:
                # --keep only disconnects: a `ray start` cluster outlives this process even when a
                # step failed, so print_next_steps always names `ray stop` after a --keep run.
                st.stop_ray(keep=args.keep)
            if fake is not None:
                fake.stop()


def _serving_snapshot(args, earlier: str | None, proc, work: Path, hf_dir: Path, store_url: str) -> str:
    """The engine snapshot to serve: an earlier run's, the one `proc` is making, or (visibly
    degraded) the offline split when the engine path failed."""
    from rich.markup import escape

    from cluster.demo.ui import console, note

    try:
        if earlier:
            # A snapshot is made once and restored by every later cold start: a rerun of
            # the demo reuses the one it made before (the engine boot is the slow part).
            snap_url = earlier
            note("reusing the engine snapshot an earlier run made (--fresh-snapshot makes a new one)")
        else:
            snap_url = finish_engine_snapshot(proc, work)
    except RuntimeError as exc:
        # Degrade, visibly: serve the offline split instead (same format, no engine state,
        # so the cold start profiles memory itself) and say why.
        from cluster.demo.snapshot import offline_snapshot

        console.print(f"  [yellow]engine snapshot unavailable[/]: {escape(str(exc))}")
        snap_url = offline_snapshot(hf_dir, store_url, name="tiny", tp=args.serve_tp)
        note("serving the offline (--engine none) snapshot instead")
    note(snap_url)
    return snap_url


def _deploy(work: Path, provider_url: str, snap_url: str, http_port: int, base_url: str, dashboard_url: str):
    """Validate and `serve deploy` the gateway and the LLM app; a Client once the gateway answers."""
    from cluster.cli.ops.deploy import deploy, validate_config
    from cluster.demo import stack as st
    from cluster.demo.ui import note
    from gateway.client import Client

    shutil.rmtree(work / "ledger", ignore_errors=True)  # this run's spend only
    gw_cfg = st.gateway_config(provider_url, (work / "ledger").as_uri(), (work / "keys").as_uri())
    gw_yaml = st.write_yaml(work / "gateway.yaml", gw_cfg)
    serve_yaml = st.write_yaml(work / "serve.yaml", st.serve_config(http_port, snap_url, gw_yaml))
    cfg, checks = validate_config(serve_yaml)
    for c in checks:
        note(f"{c.name}: {c.import_path} args valid ({c.schema or 'untyped'})")
    deploy(cfg, dashboard_url)
    st.wait_for(lambda: st.apps_running([st.LLM_APP, st.GATEWAY_APP]), 300, "Serve apps")
    client = Client(base_url, api_key=st.DEMO_KEY)
    st.wait_for(lambda: client.models().data, 60, "gateway HTTP")
    return client


def _requests(steps, client, fake, base_url: str) -> None:
    """The status tables, then every request the demo shows (each a soft step: one failing
    does not stop the rest)."""
    from cluster.cli.ops.commands import status_tables
    from cluster.cli.ops.status import gather
    from cluster.demo import session as s
    from cluster.demo.adapters import two_users
    from cluster.demo import stack as st
    from cluster.demo.ui import console

    for table in status_tables(gather(None)):
        console.print(table)
    steps.soft("Cold request: the LLM app scales from zero", s.cold_request, client)
    steps.soft("Warm request", s.warm_request, client)
    steps.soft("Streaming", s.streaming, client)
    steps.soft("Idle to zero, then a request: the parked tier answers", s.parked_request, client)
    steps.soft("Fallback: the hosted provider (a loopback FAKE) fails, the local model answers",
               s.fallback, client, fake.state)
    steps.soft("Rate-limited burst", s.rate_limited_burst, base_url, st.DEMO_KEY)
    steps.soft("Two users' adapters: same prompt, different answers, each key scoped to its own",
               two_users, base_url)
    steps.soft("The same gateway from the openai SDK", s.openai_sdk, base_url, st.DEMO_KEY)
    steps.soft("... and from inside the cluster, through a DeploymentHandle", s.in_cluster_handle, st.DEMO_KEY)
    steps.soft("Cost ledger", s.ledger, client, st.ADMIN_KEY)
    client.close()


if __name__ == "__main__":
    sys.exit(main())
