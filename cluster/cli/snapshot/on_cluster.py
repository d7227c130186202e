"""`thawline snapshot create --on-cluster`: make an engine snapshot where the model and the GPUs are.

The CLI (on a laptop or the CPU head) submits ONE Ray task holding the TP group's resources:
num_gpus=tp plus the node type's accelerator_type resource, so the autoscaler starts a GPU node of
that type if none is up. The task fetches the HF checkpoint onto that node when it is an fsspec
URL (s3://..., once per node, into the snapshot cache dir; a local path must exist on that node),
then runs `thawline snapshot create` there in a subprocess (the CLI asks for vLLM's
multiprocessing executor on the task's GPUs: a Ray executor would ask the cluster for the GPUs
the task already holds).
The task is a streaming generator: each line the capture prints (its phases) reaches the CLI as
it happens, and the snapshot URL comes last.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any, Callable


def task_options(tp: int, accelerator_type: str | None, resources: str | None) -> dict[str, Any]:
    """Ray task options for the capture. `resources` (JSON) replaces the default demand, e.g.
    '{"num_gpus": 0, "num_cpus": 1, "resources": {"snapshot_node": 1}}' (a CPU stand-in in tests,
    or a custom resource of your own node type)."""
    if resources is not None:
        try:
            opts = json.loads(resources)
        except json.JSONDecodeError as e:
            raise ValueError(f"--resources is not JSON: {e}") from None
        if not isinstance(opts, dict) or set(opts) - {"num_gpus", "num_cpus", "resources", "memory"}:
            raise ValueError('--resources takes {"num_gpus": N, "num_cpus": N, "resources": {...}, "memory": bytes}')
        return opts
    opts: dict[str, Any] = {"num_gpus": tp, "num_cpus": 1}
    if accelerator_type:
        opts["resources"] = {f"accelerator_type:{accelerator_type}": 0.001}
    return opts


def _create_on_node(source: str, argv: list[str]):
    """Runs inside the Ray task, on the chosen node: a streaming generator of ("log", line) for
    every line the capture prints (its phases, as they happen), then ("url", snapshot URL)."""
    from serve_apps.llm.first_boot import local_source

    node = os.uname().nodename
    yield "log", f"[{node}] fetching {source}" if "://" in source else f"[{node}] source {source}"
    local = local_source(source)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["PYTHONUNBUFFERED"] = "1"   # each line as it is printed, not when the pipe buffer fills
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli.main", "snapshot", "create", local, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # stdout holds only the URL (its last line); the phases and progress go to stderr, streamed
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    last = ""
    for raw in proc.stderr:
        line = raw.rstrip("\n")
        if line.strip():
            last = line
            if not line.startswith("error: "):   # the failure itself is the CLI's one error line
                yield "log", f"[{node}] {line}"
    rc = proc.wait()
    reader.join()
    if rc != 0:
        raise RuntimeError(f"snapshot create on {node} failed: {last.removeprefix('error: ') or f'exit {rc}'}")
    printed = "".join(out).strip().splitlines()
    if not printed:
        raise RuntimeError(f"snapshot create on {node} printed no snapshot URL")
    yield "url", printed[-1]


def create_on_cluster(source: str, argv: list[str], *, address: str, options: dict[str, Any],
                      on_line: Callable[[str], Any] = print) -> str:
    """Submit the capture task to the cluster at `address`; pass each line it prints to `on_line`
    while it runs; return the snapshot URL."""
    import ray

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR")
    try:
        task = ray.remote(max_retries=0)(_create_on_node).options(num_returns="streaming", **options)
        url = None
        for ref in task.remote(source, argv):
            kind, text = ray.get(ref)
            if kind == "url":
                url = text
            else:
                on_line(text)
        if url is None:
            raise RuntimeError("the capture task ended without a snapshot URL")
        return url
    except ray.exceptions.RayTaskError as e:
        raise RuntimeError(str(e.cause) if e.cause is not None else str(e).splitlines()[-1]) from None
    finally:
        ray.shutdown()
