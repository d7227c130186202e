"""Deploy LLM apps from Python by the path `serve deploy` takes, and watch their replicas.

`serve deploy <file>` sends the config to the dashboard, which validates it as
ServeDeploySchema and calls the controller's deploy_apps; the controller then runs the builder
named by import_path inside the cluster. `deploy()` does the same minus the HTTP hop, so it
needs no dashboard. Used by tests/e2e/test_serve_*.py and bench/cold_start.py.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parent.parent / "serve_apps" / "configs"

# Env every Ray process of the session inherits (the raylet is started by ray.init here).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Serve's controller loop and proxy handle push intervals are read at process start.
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
}


def start_ray_serve(http_port: int, temp_dir: str | None = None, metrics_port: int | None = None):
    """Local Ray + Serve on 127.0.0.1:http_port; with metrics_port, Ray's metrics agent serves the
    Prometheus exposition (ray.util.metrics included) on 127.0.0.1:metrics_port/metrics."""
    import ray
    from ray import serve

    os.environ.update(RAY_ENV)
    extra = {"_metrics_export_port": metrics_port} if metrics_port else {}
    ray.init(address="local", num_cpus=8, include_dashboard=False, namespace="thawline-e2e",
             _temp_dir=temp_dir, log_to_driver=False, **extra)
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    return ray


def stop_ray_serve() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def load_config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def llm_app_config(base: dict, *, name: str, route_prefix: str, args: dict, env: dict | None = None) -> dict:
    """One serve_apps.llm:app application from a config file's first one, args overridden.
    A test that gives it a route_prefix talks to the app itself over HTTP on a loopback-only
    proxy, so that route is opened explicitly (allow_unauthenticated_http) unless args say otherwise."""
    app = copy.deepcopy(next(a for a in base["applications"] if a["import_path"] == "serve_apps.llm:app"))
    app["name"], app["route_prefix"] = name, route_prefix
    if route_prefix is not None:
        app["args"].pop("http_auth_token_env", None)
        app["args"]["allow_unauthenticated_http"] = True
    for k, v in args.items():
        if v is None:
            app["args"].pop(k, None)
        elif isinstance(v, dict) and isinstance(app["args"].get(k), dict):
            app["args"][k] = {**app["args"][k], **v}
        else:
            app["args"][k] = v
    if env:
        app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env)
    return app


def deploy(apps: list[dict], http_port: int) -> None:
    """What `serve deploy <file>` makes the dashboard do: validate, then controller.deploy_apps."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    doc = {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": http_port},
           "applications": apps}
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)
    # As the dashboard does for `serve deploy`: the config's proxy_location is a serve_start
    # argument (left out, Serve starts a proxy on every node, engine nodes included, and a live
    # proxy actor keeps an idle node from ever being scaled down).
    client = serve_start(http_options={"host": "127.0.0.1", "port": http_port}, proxy_location=doc["proxy_location"])
    client.deploy_apps(schema)


def server_replicas(app: str) -> int:
    """RUNNING + STARTING replicas of the app's LLMServer deployment."""
    from ray import serve

    st = serve.status().applications.get(app)
    if st is None or "LLMServer" not in st.deployments:
        return -1
    states = st.deployments["LLMServer"].replica_states
    return sum(n for s, n in states.items() if s in ("RUNNING", "STARTING", "UPDATING", "RECOVERING"))


def app_running(app: str) -> bool:
    from ray import serve

    st = serve.status().applications.get(app)
    if st is not None and st.status == "DEPLOY_FAILED":
        raise AssertionError(f"{app} failed to deploy: {st.message} {[(n, d.message) for n, d in st.deployments.items()]}")
    return st is not None and st.status == "RUNNING"


def wait_for(cond, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
