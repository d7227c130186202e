"""A fake multi-node Ray cluster of our own on this machine, for tests and benches.

    from cluster.fake_multinode import ENGINE_RESOURCE, fake_multinode_config

    with start_fake_cluster(fake_multinode_config, extra_env={"THAWLINE_CACHE_DIR": "/tmp/x/{node_id}"}) as fc:
        with fc.connected():                  # this process as a driver (ray.init(fc.address))
            print(engine_nodes(ENGINE_RESOURCE))  # alive nodes offering that resource
        subprocess.run([...], env=fc.env)     # or a driver in a child process

The head is `RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=<the caller's config, pointed
at this head>`; the real autoscaler then "launches" worker nodes (cpu-engine, gpu-*) as extra
raylets on this machine and removes them when idle. Ray 2.60's `ray up` cannot use the fake
provider (its defaults file is missing from the wheel), hence `ray start`.

The autoscaler config comes from the caller (the product's cluster/fake_multinode.py builds and
validates it): test support depends on nothing in the operator package.

What every cluster gets:
- a sandbox token (testkit/sandbox.py): `stop()` stops exactly this cluster's processes, never
  another Ray on the machine (no `ray stop`);
- a short temp dir (Ray's unix sockets have a ~107 byte limit) and free ports;
- AUTOSCALER_UPDATE_INTERVAL_S=1, so scale up/down reacts within a second, not Ray's 5 s;
- `extra_env` (and testkit.serve_deploy.RAY_ENV: offline hub, Serve's 0.25 s metric pushes) in
  the env of `ray start`: the head raylet passes it to its workers, and the autoscaler monitor,
  which starts the fake nodes' raylets in its own process, passes it to every fake node.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import yaml

from testkit.net import free_port
from testkit.sandbox import MARKER_ENV, stop_sandbox
from testkit.serve_deploy import RAY_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
# (GCS port, head CPUs, head custom resources) -> the autoscaler config the head runs with
AutoscalerConfig = Callable[[int, int, dict[str, float]], dict]


@dataclass
class FakeCluster:
    address: str            # GCS address, "127.0.0.1:<port>": ray.init(address=...)
    env: dict[str, str]     # the full env `ray start` got (os.environ + cluster vars + extra_env)
    token: str              # sandbox token (testkit.sandbox.MARKER_ENV) of every process
    root: Path              # temp dir: Ray's temp dir, HOME, the autoscaler config
    config_path: Path       # the autoscaler config the head runs with
    extra_env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop this cluster's processes (fake nodes and their workers included) and remove its
        temp dir. Idempotent."""
        stop_sandbox(self.token)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "FakeCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextlib.contextmanager
    def connected(self, **init_kwargs) -> Iterator[None]:
        """This process as a driver of the cluster for the block: ray.init(address), then
        ray.shutdown() whatever happens inside."""
        import ray

        ray.init(address=self.address, **{"log_to_driver": False, **init_kwargs})
        try:
            yield
        finally:
            ray.shutdown()


def start_fake_cluster(autoscaler_config: AutoscalerConfig, *, head_cpus: int = 4,
                       head_resources: dict[str, float] | None = None,
                       extra_env: dict[str, str] | None = None, timeout_s: float = 120) -> FakeCluster:
    """Start the head (the autoscaler adds worker nodes on demand). On failure nothing is left
    running. The caller stops it: `stop()` or `with`. `autoscaler_config(port, head_cpus,
    head_resources)` gives the config for a head on 127.0.0.1:port."""
    import json

    token = uuid.uuid4().hex
    root = Path(tempfile.mkdtemp(prefix="tl-fc-", dir="/tmp"))
    try:
        (root / "home").mkdir()
        port = free_port()
        head_resources = dict(head_resources or {})
        config_path = root / "autoscaler.yaml"
        config_path.write_text(yaml.safe_dump(autoscaler_config(port, head_cpus, head_resources)))
        extra = {**RAY_ENV, **(extra_env or {})}
        env = {
            **os.environ,
            **extra,
            MARKER_ENV: token,
            "RAY_FAKE_CLUSTER": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray 2.60 may turn token auth on (and write a token under ~/.ray). Off, as for
            # `ray.init(address="local")`: a loopback test cluster, and a driver in a process that
            # imported Ray already could not pick a token up (Ray reads the mode at import).
            "RAY_AUTH_MODE": "disabled",
            "HOME": str(root / "home"),
            "RAY_TMPDIR": str(root),
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            # Workers of every node import the project (serve_apps, snapshots) from the checkout.
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        }
        cmd = [
            RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
            f"--num-cpus={head_cpus}", "--num-gpus=0", f"--temp-dir={root / 'ray'}",
            f"--autoscaling-config={config_path}", "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            "--object-store-memory=100000000", "--disable-usage-stats",
        ]
        if head_resources:
            cmd.append(f"--resources={json.dumps(head_resources)}")
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
    except BaseException:
        stop_sandbox(token)
        shutil.rmtree(root, ignore_errors=True)
        raise
    return FakeCluster(f"127.0.0.1:{port}", env, token, root, config_path, extra)


def engine_nodes(resource: str) -> list[dict]:
    """Alive nodes offering `resource` (ray.nodes() entries); needs a connected driver."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource, 0) > 0]
