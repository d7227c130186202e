"""Demo building blocks for the serving half: a local Ray, the demo's gateway.yaml and Serve
config, deploy (the same validate + REST path as `thawline deploy`), and a clean stop.

The hosted provider of the demo is the loopback fake from testkit/fake_providers.py (it speaks
OpenAI's real wire format); it is labelled as a fake everywhere the demo prints it.
"""
from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

LLM_APP = "tiny-llm"
GATEWAY_APP = "gateway"
MODEL = "tiny"                      # route alias and served model id
DEMO_KEY = "sk-thawline-demo"       # a demo-only key, hashed into gateway.yaml like a real one
ADMIN_KEY = "admin-thawline-demo"
FAKE_HOSTED_MODEL = "gpt-4o-mini"   # what the fake hosted provider is asked for
BURST_RPM = 5
MAX_TOKENS_CAP = 128                # below the served max_model_len (256, local-cpu.yaml)
DEMO_IDLE_S = 8.0                    # the LLM replica scales to zero (and parks) after this much idle
PARKED_MEMORY_GB = 8.0               # the warm pool's budget for parked engines (the tiny one: ~2-3 GB with its 1 GiB KV cache)
COLD_WAIT_S = 300.0                 # how long a request may wait for the model to come up from zero
# demo-only keys of two users, each scoped to its own LoRA adapters (`<user>-*`, cluster/demo/adapters.py)
ADAPTER_KEYS = {"alice": "sk-thawline-demo-alice", "bob": "sk-thawline-demo-bob"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def gateway_config(fake_base_url: str, ledger_url: str, key_store_url: str | None = None) -> dict[str, Any]:
    """Three routes, one per thing the demo shows:
    - `tiny`:      the local model only (cold start, warm request, streaming);
    - `resilient`: a hosted provider first, which fails (the fake answers 500 for `-500` models),
                   then the local model: the fallback;
    - `burst`:     the (working) fake hosted provider behind a 5 requests/min limit.
    With `key_store_url`, keys made live by `thawline keys ...` are kept there (the README's commands).
    """
    cfg: dict[str, Any] = {
        "providers": {
            "local": {"type": "serve", "app": LLM_APP, "usd_per_hour": 0.40},
            "hosted-fake": {
                "type": "openai_compatible", "base_url": fake_base_url,
                # list prices of the model the fake stands in for, so the ledger shows real-looking spend
                "prices": {FAKE_HOSTED_MODEL: {"input_per_1m": 0.15, "output_per_1m": 0.60},
                           f"{FAKE_HOSTED_MODEL}-500": {"input_per_1m": 0.15, "output_per_1m": 0.60}},
            },
        },
        "routes": {
            # generous: a cold start on a busy 2-core laptop can take minutes, not seconds
            # max_tokens_cap: sent as max_tokens when a request has none (the README's SDK snippet);
            # it must fit the served max_model_len (256), or vLLM rejects the request
            MODEL: {"targets": [{"provider": "local", "model": MODEL, "first_token_timeout_s": COLD_WAIT_S,
                                 "timeout_s": COLD_WAIT_S}], "max_tokens_cap": MAX_TOKENS_CAP},
            "resilient": {"max_tokens_cap": MAX_TOKENS_CAP, "targets": [
                {"provider": "hosted-fake", "model": f"{FAKE_HOSTED_MODEL}-500", "timeout_s": 10,
                 "first_token_timeout_s": 10},
                {"provider": "local", "model": MODEL, "first_token_timeout_s": COLD_WAIT_S, "timeout_s": COLD_WAIT_S},
            ]},
            "burst": {"targets": [{"provider": "hosted-fake", "model": FAKE_HOSTED_MODEL, "timeout_s": 10}],
                      "limits": {"rpm": BURST_RPM}},
        },
        "keys": [{"id": "demo", "sha256": sha256(DEMO_KEY), "routes": ["*"]},
                 *({"id": user, "sha256": sha256(key), "routes": [MODEL], "adapters": [f"{user}-*"]}
                   for user, key in ADAPTER_KEYS.items())],
        "ledger": {"url": ledger_url, "flush_interval_s": 1.0},
        "server": {"admin_key_env": None, "admin_key_sha256": sha256(ADMIN_KEY)},
    }
    if key_store_url:
        cfg["key_store"] = {"url": key_store_url}
    return cfg


CONFIGS = Path(__file__).resolve().parents[2] / "serve_apps" / "configs"  # from cluster/demo/


def serve_config(http_port: int, snapshot_url: str, gateway_yaml: Path) -> dict[str, Any]:
    """The shipped `gateway-serve.yaml` (tiny LLM app scaled to zero + the gateway), with this
    run's port, snapshot and gateway.yaml filled in, and the CPU engine settings and env of
    `local-cpu.yaml`. Still a plain Serve config file, as `serve deploy` takes it."""
    base = yaml.safe_load((CONFIGS / "gateway-serve.yaml").read_text())
    local = yaml.safe_load((CONFIGS / "local-cpu.yaml").read_text())["applications"][0]
    base["http_options"] = {"host": "127.0.0.1", "port": http_port}
    apps = {a["name"]: a for a in base["applications"]}
    llm, gw = apps[LLM_APP], apps[GATEWAY_APP]
    # the demo made its snapshot through the engine path already: restore it, no first boot
    for key in ("model_source", "snapshot_store", "snapshot_name"):
        llm["args"].pop(key, None)
    llm["args"]["snapshot_url"] = snapshot_url
    llm["args"]["served_model_id"] = MODEL
    for key in ("engine_overrides", "accelerator", "cpus_per_rank", "warm_pool_size"):
        if key in local["args"]:
            llm["args"][key] = local["args"][key]
    llm["args"]["cold_start_max_wait_s"] = COLD_WAIT_S
    # local-cpu's short metric intervals make scale-from-zero start within a second or so; the
    # short downscale delay lets the session show a scale-down that parks the engine, and the
    # request at zero that the parked engine answers.
    llm["args"]["autoscaling"] = {**local["args"].get("autoscaling", {}), "min_replicas": 0,
                                  "max_replicas": 1, "downscale_delay_s": DEMO_IDLE_S}
    llm["args"]["parked_memory_gb"] = PARKED_MEMORY_GB
    # per-user LoRA adapters pushed next to the snapshot (cluster/demo/adapters.py)
    llm["args"]["adapters"] = {"enabled": True, "max_loras": 2, "max_lora_rank": 8, "list_every_s": 2}
    if "runtime_env" in local and "runtime_env" not in llm:
        llm["runtime_env"] = local["runtime_env"]
    gw["args"]["config_path"] = str(gateway_yaml)
    return base


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class LocalRay:
    dashboard_url: str
    gcs_address: str


def start_ray(temp_dir: Path | None = None) -> LocalRay:
    """A fresh local Ray for this process only (address="local": never joins another cluster),
    with the dashboard, which `serve deploy` talks to, on a free loopback port."""
    import ray

    from gateway.names import NAMESPACE

    # 2 physical cores: Ray deadlocks on CPU reservations unless it is given more logical CPUs.
    ctx = ray.init(address="local", num_cpus=8, include_dashboard=True, dashboard_host="127.0.0.1",
                   dashboard_port=free_port(), log_to_driver=False, logging_level="ERROR",
                   namespace=NAMESPACE, _temp_dir=str(temp_dir) if temp_dir else None)
    return LocalRay(dashboard_url=f"http://{ctx.dashboard_url}", gcs_address=ctx.address_info["gcs_address"])


# `--keep`: the ports of a plain `ray start --head` and of gateway-serve.yaml, so the README's
# commands (`thawline status`, `thawline chat tiny`, the dashboard) reach the kept stack as pasted.
KEEP_GCS_PORT, KEEP_DASHBOARD_PORT, KEEP_HTTP_PORT = 6379, 8265, 8000


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_ray_cluster(num_cpus: int = 8) -> LocalRay:
    """A real local cluster (`ray start --head`) that outlives this process, for `--keep`: the
    CLI attaches to it afterwards like to any cluster. Replicas inherit this process's env
    (demo_env, THAWLINE_CACHE_DIR, THAWLINE_DEMO_DIR) through the raylet `ray start` launches."""
    import subprocess

    from cluster.cli.ops.ray_connect import use_token_auth_if_available
    from cluster.launch import ray_executable

    for port, what in ((KEEP_GCS_PORT, "Ray GCS"), (KEEP_DASHBOARD_PORT, "Ray dashboard"),
                       (KEEP_HTTP_PORT, "Serve HTTP")):
        if port_busy(port):
            raise RuntimeError(f"port {port} ({what}) is in use: is a Ray cluster already running? "
                               f"`ray stop` it, or run the demo without --keep")
    cmd = [ray_executable(), "start", "--head", f"--num-cpus={num_cpus}", f"--port={KEEP_GCS_PORT}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={KEEP_DASHBOARD_PORT}", "--disable-usage-stats"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"`ray start --head` failed (exit {proc.returncode}): {tail[0]}")
    use_token_auth_if_available()  # `ray start` wrote ~/.ray/auth_token; this driver must send it
    import ray

    from gateway.names import NAMESPACE

    gcs = f"127.0.0.1:{KEEP_GCS_PORT}"
    ray.init(address=gcs, log_to_driver=False, logging_level="ERROR", namespace=NAMESPACE)
    return LocalRay(dashboard_url=f"http://127.0.0.1:{KEEP_DASHBOARD_PORT}", gcs_address=gcs)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    """Bounded polling: the predicate's first truthy value, or TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
            last_exc = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s" + (f" (last error: {last_exc})" if last_exc else ""))


def apps_running(names: list[str]) -> dict[str, str] | None:
    from ray import serve

    apps = serve.status().applications
    states = {n: str(getattr(apps[n].status, "value", apps[n].status)) for n in names if n in apps}
    if any(s in ("DEPLOY_FAILED", "UNHEALTHY") for s in states.values()):
        msgs = {n: apps[n].message for n in names if n in apps and apps[n].message}
        raise RuntimeError(f"deploy failed: {msgs}")
    return states if len(states) == len(names) and all(s == "RUNNING" for s in states.values()) else None


def replica_counts(app: str, deployment: str | None = "LLMServer") -> dict[str, int]:
    """Serve's replica states (RUNNING, STARTING, ...) of the app's engine deployment (the part
    that scales to zero; the always-on router is left out), or of all its deployments."""
    from ray import serve

    a = serve.status().applications.get(app)
    deps = dict(a.deployments) if a else {}
    if deployment in deps:
        deps = {deployment: deps[deployment]}
    out: dict[str, int] = {}
    for dep in deps.values():
        for k, v in (dep.replica_states or {}).items():
            key = str(getattr(k, "value", k))
            out[key] = out.get(key, 0) + int(v)
    return out


def stop_ray(keep: bool = False) -> None:
    """Stop Serve and this process's Ray; keep=True only disconnects (the cluster stays up)."""
    import ray
    from ray import serve

    try:
        if not keep:
            serve.shutdown()
    finally:
        ray.shutdown()


def demo_env() -> None:
    """Env the replicas inherit (the local raylet is started by this process)."""
    for k, v in {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "RAY_USAGE_STATS_ENABLED": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                 # fast scale-from-zero: the autoscaler sees the first request only once a handle pushes metrics
                 "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}.items():
        os.environ.setdefault(k, v)
