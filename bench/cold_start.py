"""Cold start: time to first token of the first request after an LLM app scaled to zero.

Same tiny model, same cluster, same Ray session, per scenario, three apps:
  (a) baseline: Ray Serve LLM `build_openai_app` on the HF dir, min_replicas 0, today's defaults
      (node-init download task, env vars in the LLMConfig's runtime_env, ingress scaling with
      the model);
  (b) baseline_tuned: the same, as a careful Ray user sets it for a local model dir: node init
      skipped through Ray's own callback hook (ctx.run_init_node=False), no runtime_env (the env
      vars are in the cluster's process env), ingress pinned at num_replicas 1
      (bench/cold_start_apps.py baseline_app);
  (c) thawline: `serve_apps.llm` restoring the model's engine snapshot from S3 (a moto server on
      127.0.0.1 started here) through the node cache (emptied at the start of each scenario),
      min_replicas 0, with its per-node warm pool of pre-imported engine hosts.
Scenarios (bench/cold_start_apps.py):
  replica  TP=1; the node is up, the app is at zero replicas (the default);
  tp2      TP=2 for all apps (the baselines on vLLM's multiprocessing workers, 2 CPU bundles);
  node     TP=1 on a fake multinode cluster (testkit/fake_cluster.py): the engine node type
           scales to zero too, so a cold start first waits for the autoscaler to add a node;
  parked   TP=1; thawline with parked_memory_gb 4, timed THROUGH THE GATEWAY (serve_apps.gateway
           in the same Serve instance, one route to the app, bench/cold_start_gateway.py): one
           unmeasured warm-up request first, then before each timed request the app is at zero
           LLMServer replicas AND the readiness board says tier `parked`, so the router answers
           from the parked engine. The baselines are timed on their own routes, as elsewhere.
Cold starts alternate a, b, c, a, b, c... so load drift on a noisy machine hits all alike. Before
each: all apps at zero replicas (and, for `node`, zero engine nodes), every warm pool settled.
Median of --runs cold starts each; warm TTFT = the thawline request right after a cold one.

    python bench/cold_start.py [--runs 3] [--scenario replica|tp2|node|parked|all ...] [--workdir DIR]

Several scenarios (`--scenario replica tp2 node`, or `all`) run one after another, each in its
own process and Ray cluster. Each prints a table, then its JSON line as its last line:
  {"bench":"cold_start","scenario":..,"baseline_ttft_s":..,"thawline_ttft_s":..,"speedup":..,
   "warm_ttft_s":..,"breakdown":{..},"runs":..,"baseline_tuned_ttft_s":..,"speedup_tuned":..}
`speedup` = baseline / thawline, `speedup_tuned` = baseline_tuned / thawline (medians).
`breakdown`: thawline's cold-start phases (median s) and `tier`, the tier(s) its recorded cold
starts took (a `parked` answer records only `total`); for `node` also `node_start` (request to
the engine node registered with the GCS), `after_node_s` (thawline TTFT minus node_start),
`baseline.node_start` and `baseline_tuned.node_start`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.cold_start_apps import (  # noqa: E402
    BASELINE_NODE_TYPES, SCENARIOS, Scenario, baseline_app, make_snapshot, thawline_app, upload_snapshot,
)
from bench.cold_start_cluster import (  # noqa: E402
    NodeWatch, deployment_replicas, downloads_since, last_cold_start, settle_pools, ttft, wait_no_engine_nodes,
    wait_zero,
)
from bench.cold_start_gateway import gateway_app, gateway_headers, gateway_url, wait_parked  # noqa: E402
from gateway import cold_start_phases as cs  # noqa: E402
from serve_apps.llm.zygote import SOCKET_ENV as ZYGOTE_SOCKET_ENV  # noqa: E402
from snapshots.cache import CACHE_DIR_ENV, NODE_ID_FIELD  # noqa: E402

APPS = ("baseline", "baseline_tuned", "thawline")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", nargs="+", default=["replica"], choices=[*SCENARIOS, "all"],
                   help="One or more scenarios, or `all` (default: replica).")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/thawline-bench-cold"))
    p.add_argument("--pool-settle-s", type=float, default=120.0,
                   help="Max wait for the warm pools' hosts to finish importing before each cold start.")
    p.add_argument("--fresh", action="store_true", help="Remake the model and snapshots in --workdir.")
    a = p.parse_args()
    names = list(SCENARIOS) if "all" in a.scenario else list(dict.fromkeys(a.scenario))
    if a.fresh:
        shutil.rmtree(a.workdir, ignore_errors=True)
    if len(names) == 1:
        return run_scenario(SCENARIOS[names[0]], a)
    # One process per scenario: vLLM's and Ray's process-wide state never leaks between them.
    worst = 0
    for name in names:
        print(f"\n=== cold_start --scenario {name} ===", flush=True)
        rc = subprocess.call([sys.executable, __file__, "--scenario", name, "--runs", str(a.runs),
                              "--workdir", str(a.workdir), "--pool-settle-s", str(a.pool_settle_s)], cwd=REPO_ROOT)
        worst = worst or rc
    return worst


def run_scenario(sc: Scenario, a) -> int:
    t_start = time.monotonic()
    cache = a.workdir / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # each run starts with empty node caches
    a.workdir.mkdir(parents=True, exist_ok=True)
    print(f"scenario {sc.name}: {sc.what}\nmaking the tiny model's TP={sc.tp} engine snapshot ...", flush=True)
    hf, local = make_snapshot(a.workdir, sc.tp)

    import logging

    from testkit.moto_s3 import moto_s3_server

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the table
    m = Measured()
    with moto_s3_server() as endpoint:  # before the cluster: every Ray process inherits AWS_* env
        snap = upload_snapshot(local, endpoint)
        print(f"snapshot in S3: {snap}", flush=True)
        with _cluster(sc, cache) as port:
            targets = _deploy(sc, hf, snap, port)
            if sc.parked:  # an engine must exist before it can park: one unmeasured request
                print("warm-up request (unmeasured) so thawline has an engine to park ...", flush=True)
                ttft(*targets["thawline"])
            for i in range(a.runs):
                for app in APPS:
                    _cold_start(sc, a, app, i, targets, port, cache, m)
    _report(sc, a.runs, m, time.monotonic() - t_start)
    return 0


class Measured:
    """What the runs measured: cold TTFTs and engine-node waits per app, warm TTFTs, thawline's
    recorded cold starts, the last pool stats seen."""

    def __init__(self) -> None:
        self.cold: dict[str, list[float]] = {app: [] for app in APPS}
        self.nodes: dict[str, list[float | None]] = {app: [] for app in APPS}
        self.warm: list[float] = []
        self.breakdowns: list[dict] = []
        self.pool = None


def _deploy(sc: Scenario, hf: Path, snap: str, port: int) -> dict[str, tuple]:
    """The three apps (plus, for `parked`, the gateway in front of thawline); returns each app's
    timed endpoint as ttft()'s (url, t0, headers) arguments, t0 None."""
    from ray import serve

    serve.run(baseline_app(hf, sc), name="baseline", route_prefix="/baseline", blocking=False)
    serve.run(baseline_app(hf, sc, tuned=True), name="baseline_tuned", route_prefix="/baseline_tuned",
              blocking=False)
    serve.run(thawline_app(snap, sc), name="thawline", route_prefix="/thawline", blocking=False)
    targets = {app: (f"http://127.0.0.1:{port}/{app}/v1/completions", None, None) for app in APPS}
    if sc.parked:
        serve.run(gateway_app("thawline"), name="gateway", route_prefix="/", blocking=False)
        targets["thawline"] = (gateway_url(port), None, gateway_headers())
    return targets


def _cold_start(sc: Scenario, a, app: str, i: int, targets: dict, port: int, cache: Path, m: Measured) -> None:
    # Every app at zero, not just the measured one: another app's replica shutting down (vLLM
    # teardown) would otherwise share the CPUs with this cold start.
    for other in APPS:
        wait_zero(other)
    if sc.multinode:
        wait_no_engine_nodes()
    if sc.parked and app == "thawline":
        wait_parked(port, deployment_replicas)
    # No warm-pool import running in the background (it refills after a claim), so no
    # measurement shares the CPUs with it.
    m.pool = settle_pools(a.pool_settle_s)
    url, _, headers = targets[app]
    t0, t_wall = time.perf_counter(), time.time()
    watch = NodeWatch(t0) if sc.multinode else None
    t = ttft(url, t0, headers)
    node_s = watch.stop() if watch else None
    m.cold[app].append(t)
    m.nodes[app].append(node_s)
    extra = f"; engine node up after {node_s:.2f} s" if node_s is not None else ""
    if app == "thawline":
        m.warm.append(ttft(url, None, headers))
        m.breakdowns.append(last_cold_start(port))
        extra += f"; tier {m.breakdowns[-1].get('tier')}"
        extra += f"; snapshot downloads since the request: {downloads_since(cache, t_wall) or 'none'}"
    print(f"run {i + 1}: {app:14s} cold TTFT {t:6.2f} s{extra}", flush=True)


@contextlib.contextmanager
def _cluster(sc: Scenario, cache: Path):
    """Ray + Serve for the scenario, torn down on exit; yields Serve's HTTP port (127.0.0.1).
    Local scenarios: one node started here. `node`: a fake multinode cluster whose engine node
    type scales to zero, with a cache dir per node; the proxy runs on the head only."""
    import ray
    from ray import serve

    from cluster.fake_multinode import fake_multinode_config
    from testkit.fake_cluster import start_fake_cluster
    from testkit.net import free_port
    from testkit.sandbox import MARKER_ENV, stop_sandbox
    from testkit.serve_deploy import RAY_ENV

    port = free_port()
    os.environ.update({**RAY_ENV, **sc.env})
    with contextlib.ExitStack() as stack:  # unwinds in reverse: Serve, Ray, then the cluster
        if sc.multinode:
            sockets = tempfile.mkdtemp(prefix="tl-z-", dir="/tmp")  # unix socket paths: <= 107 bytes
            stack.callback(shutil.rmtree, sockets, ignore_errors=True)
            fake = stack.enter_context(start_fake_cluster(
                partial(fake_multinode_config, node_types=BASELINE_NODE_TYPES, preload=True), extra_env={
                **sc.env, CACHE_DIR_ENV: str(cache / NODE_ID_FIELD),
                # thawline's engine nodes start a node zygote before they register, as
                # `thawline cluster preload` in the real configs' start commands does
                ZYGOTE_SOCKET_ENV: f"{sockets}/z-{{node_id}}.sock",
                # An idle engine node's warm pool retires after this, so the node can go away
                # between runs (default 60 s).
                "THAWLINE_WARM_POOL_RETIRE_S": "10"}))
            stack.enter_context(fake.connected())
        else:
            temp = tempfile.mkdtemp(prefix="tl-cold-", dir="/tmp")  # Ray's unix sockets: short paths
            stack.callback(shutil.rmtree, temp, ignore_errors=True)
            # Every process of this Ray carries the token: vLLM processes a replica left behind
            # are stopped too, and only ours.
            token = os.environ[MARKER_ENV] = f"cold-start-{uuid.uuid4().hex[:12]}"
            stack.callback(stop_sandbox, token)
            os.environ[CACHE_DIR_ENV] = str(cache)
            ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
            stack.callback(ray.shutdown)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        stack.callback(serve.shutdown)
        yield port


def _median(xs) -> float:
    return round(statistics.median(xs), 3)


# This bench's JSON keeps its first field names, so runs recorded in RESULTS.md stay comparable;
# the phases were since renamed by what they time (gateway/cold_start_phases.py).
_FIELD_OF_PHASE = {cs.ENGINE_PREPARE: "restore", cs.ENGINE_START_WITH_WEIGHTS: "engine_init"}


def phase_breakdown(cold_starts: list[dict]) -> dict[str, float]:
    """Median seconds per phase over the runs' recorded cold starts, under this bench's JSON field
    names; plus the engine start's split (vLLM config / AsyncLLM start, weights loading inside /
    OpenAI serving state) as engine_init.<part>."""
    breakdown = {_FIELD_OF_PHASE.get(k, k): _median(b["phases_s"].get(k, 0.0) for b in cold_starts)
                 for k in {k for b in cold_starts for k in b.get("phases_s", {})}}
    breakdown = dict(sorted(breakdown.items()))
    for k in sorted({k for b in cold_starts for k in b.get("engine_start_detail_s", {})}):
        breakdown[f"engine_init.{k}"] = _median(b.get("engine_start_detail_s", {}).get(k, 0.0) for b in cold_starts)
    return breakdown


def _report(sc: Scenario, runs: int, m: Measured, wall_s: float):
    med = {app: statistics.median(m.cold[app]) for app in APPS}
    breakdown = phase_breakdown(m.breakdowns)
    tiers = sorted({b.get("tier") for b in m.breakdowns if b.get("tier")})
    if tiers:
        breakdown["tier"] = ",".join(tiers)  # what thawline's recorded cold starts say they were
    if sc.multinode:
        _node_breakdown(m, breakdown)
    print()
    print(f"scenario {sc.name}: {sc.what}")
    print(f"{'app':15s} {'cold TTFT runs (s)':40s} {'median':>8s}")
    for app in APPS:
        print(f"{app:15s} {', '.join(f'{x:.2f}' for x in m.cold[app]):40s} {med[app]:8.2f}")
        if sc.multinode:
            print(f"{'':15s} engine node up after: {', '.join('-' if n is None else f'{n:.2f}' for n in m.nodes[app])}")
    print(f"thawline warm TTFT median {statistics.median(m.warm):.3f} s; hosts: "
          f"{[b.get('host') for b in m.breakdowns]}; pool {m.pool}")
    print("thawline cold-start phases (median s): " + ", ".join(f"{k}={v}" for k, v in breakdown.items()))
    print(f"wall time of the scenario: {wall_s:.0f} s")
    thaw = med["thawline"]
    print(json.dumps({"bench": "cold_start", "scenario": sc.name, "baseline_ttft_s": round(med["baseline"], 3),
                      "thawline_ttft_s": round(thaw, 3), "speedup": round(med["baseline"] / thaw, 2),
                      "warm_ttft_s": _median(m.warm), "breakdown": breakdown, "runs": runs,
                      "baseline_tuned_ttft_s": round(med["baseline_tuned"], 3),
                      "speedup_tuned": round(med["baseline_tuned"] / thaw, 2)}), flush=True)


def _node_breakdown(m: Measured, breakdown: dict) -> None:
    """`node`: seconds until the engine node registered, thawline's TTFT after it, and the
    baselines' node waits."""
    thaw_nodes = [n for n in m.nodes["thawline"] if n is not None]
    if thaw_nodes:
        breakdown["node_start"] = _median(thaw_nodes)
        breakdown["after_node_s"] = _median(t - n for t, n in zip(m.cold["thawline"], m.nodes["thawline"])
                                            if n is not None)
    for app in ("baseline", "baseline_tuned"):
        base_nodes = [n for n in m.nodes[app] if n is not None]
        if base_nodes:
            breakdown[f"{app}.node_start"] = _median(base_nodes)


if __name__ == "__main__":
    sys.exit(main())
