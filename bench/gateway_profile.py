"""Where one gateway request spends its CPU: cProfile over N requests through the Gateway ASGI app.

    .venv/bin/python -m bench.gateway_profile [--requests 4000] [--concurrency 32] [--top 25] [--no-ray]

The app is built as the Serve replica builds it (serve_apps/gateway.py): the bench's config from
bench/gateway.py (rpm/tpm limits on, cost ledger on), LimitClient and CostTracker from the config
(their broker and ledger actors on a local Ray, started here), METRICS with its Ray export, and the
replica header set. Requests go straight into the ASGI callable (no HTTP server, no Serve request
wrapper: that part is Ray's, not the gateway's); the upstream is the loopback fake of
testkit/fake_providers.py in its own process, answering at once. Prints the wall time per request
without the profiler, then the top functions by own time and by cumulative time with it.
`--no-ray`: no limits, no ledger, no Ray metrics (the gateway alone, for a quick look).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

from bench.gateway import BENCH_KEY, UPSTREAM_KEY_ENV, gateway_config  # noqa: E402 - after the sys.path fix
from bench.loadgen import free_port, wait_port  # noqa: E402

BODY = b'{"model": "bench", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}'
SCOPE_HEADERS = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {BENCH_KEY}".encode()),
                 (b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


def build(config: dict, use_ray: bool):
    from gateway.app import Gateway
    from gateway.config import parse_config
    from gateway.metrics import METRICS

    if not use_ray:
        config = {k: v for k, v in config.items() if k != "ledger"}
        for r in config["routes"].values():
            r.pop("limits", None)
        return Gateway(parse_config(config), limits=None, costs=None, metrics=METRICS)
    from gateway.costs.tracker import CostTracker
    from gateway.limits.client import LimitClient

    cfg = parse_config(config)
    gw = Gateway(cfg, limits=LimitClient.from_config(cfg, tuning=cfg.limiter), costs=CostTracker.from_config(cfg),
                 metrics=METRICS)
    gw.replica_header = (b"x-thawline-replica", b"profile-replica")
    return gw


async def one(app) -> int:
    """One request, the messages uvicorn would hand the app; returns the status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "headers": SCOPE_HEADERS,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    status = 0

    async def receive():
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(msg):
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]

    await app(scope, receive, send)
    return status


async def drive(app, n: int, conc: int) -> float:
    left = n
    bad = 0

    async def worker():
        nonlocal left, bad
        while left > 0:
            left -= 1
            if await one(app) != 200:
                bad += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    dt = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"{bad} of {n} requests did not answer 200")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-ray", action="store_true")
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "testkit.fake_providers", "--port", str(port)], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ[UPSTREAM_KEY_ENV] = "sk-upstream-fake"
    try:
        wait_port(port, 30, up)
        if not a.no_ray:
            import ray
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        with tempfile.TemporaryDirectory(prefix="gw-prof-") as tmp:
            app = build(gateway_config(f"http://127.0.0.1:{port}", Path(tmp) / "ledger"), not a.no_ray)
            try:
                import uvloop
                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            except ImportError:
                runner = asyncio.Runner()
            with runner:
                runner.run(app.startup())
                runner.run(drive(app, 1000, a.concurrency))                 # warm-up: pools, leases
                plain = min(runner.run(drive(app, a.requests, a.concurrency)) for _ in range(3))
                prof = cProfile.Profile()
                prof.enable()
                runner.run(drive(app, a.requests, a.concurrency))
                prof.disable()
                runner.run(app.shutdown())
    finally:
        up.terminate()
        up.wait(10)
        if not a.no_ray:
            import ray
            ray.shutdown()
    print(f"gateway in-process: {plain / a.requests * 1e6:.0f} us per request wall (best of 3 x "
          f"{a.requests}, c{a.concurrency}, upstream call included; no profiler)")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(a.top)
        print(f"\n--- top {a.top} by {key} ({a.requests} requests) ---")
        print(out.getvalue().split("\n\n", 2)[-1].rstrip())


if __name__ == "__main__":
    main()
