"""Only the gateway is public. Every shipped Serve config (serve_apps/configs/) is deployed on a
real local Ray Serve, as `serve deploy` does, and every LLM app's route on the proxy port is
probed without a key and with keys meant for something else: 401/403/404, never a completion.
The LLM apps are the real serve_apps.llm:app (their routers; the engine deployments stay at
zero, so the GPU configs deploy on this CPU machine too) and the gateway is the real one.
Also: `thawline deploy` refuses, in one line, a config exposing an LLM app over HTTP without auth.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, free_port
from tests.integration.conftest_gateway import end_session_ray
from testkit.serve_deploy import CONFIGS, app_running, deploy, start_ray_serve, stop_ray_serve, wait_for

pytestmark = pytest.mark.integration

LLM = "serve_apps.llm:app"
SHIPPED = sorted(p.name for p in CONFIGS.glob("*.yaml") if "applications" in yaml.safe_load(p.read_text()))
LLM_TOKEN = "tl-llm-http-token-for-tests"
ADMIN = "admin-exposure-test"
# keys that are valid somewhere, just not on an LLM app's own route: the gateway configs' demo
# client keys (gateway-example.yaml, gateway-aws.yaml) and the gateway's admin key
OTHER_KEYS = ["sk-thawline-demo", "tl-demo-key", ADMIN]
PROBES = [("POST", "/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
          ("POST", "/v1/completions", {"model": "x", "prompt": "hi"}),
          ("POST", "/v1/chat/completions", {"model": "x", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
          ("GET", "/v1/models", None), ("GET", "/thawline/state", None)]


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    demo = tmp_path_factory.mktemp("demo")
    # The replicas must inherit the env below, so this module starts Ray itself, after it: a Ray
    # started earlier by the gateway modules' session fixture is ended first.
    end_session_ray()
    os.environ.update({"THAWLINE_SNAPSHOT_STORE": (demo / "store").as_uri(), "THAWLINE_DEMO_DIR": str(demo),
                       "THAWLINE_ADMIN_KEY": ADMIN, "THAWLINE_LLM_HTTP_TOKEN": LLM_TOKEN,
                       # gateway-aws.yaml's key store and ledger, and its hosted target's key
                       "THAWLINE_GATEWAY_STORE": (demo / "gateway").as_uri(), "TOGETHER_API_KEY": "not-a-real-key"})
    p = free_port()
    start_ray_serve(p)
    yield p
    stop_ray_serve()


def test_every_shipped_config_is_probed():
    assert {"local-cpu.yaml", "gateway-serve.yaml", "aws-cluster.yaml", "gpu-8b-tp1.yaml", "gpu-70b-tp4.yaml"} <= set(SHIPPED)


def _apps_for_this_machine(doc: dict) -> list[dict]:
    """The config's apps as shipped, but no pre-imported engine hosts (warm_pool_size 0), the
    gateway at zero CPUs and not pinned to a head resource, and a gateway `listen` on loopback at
    a free port: none changes a route or an auth check, and tests bind loopback only."""
    apps = copy.deepcopy(doc["applications"])
    for a in apps:
        if a["import_path"] == LLM:
            a["args"]["warm_pool_size"] = 0
        else:
            dep = a["args"].setdefault("deployment", {})
            dep["ray_actor_options"] = {"num_cpus": 0}
            if "listen" in a["args"]:
                a["args"]["listen"].update(host="127.0.0.1", port=free_port())
    return apps


def _probe(base: str, prefix: str, auth: str | None) -> list[tuple[str, int, str]]:
    out = []
    headers = {"authorization": f"Bearer {auth}"} if auth else {}
    for method, path, body in PROBES:
        url = base + (prefix.rstrip("/") + path)
        r = httpx.request(method, url, json=body, headers=headers, timeout=60)
        out.append((f"{method} {prefix.rstrip('/')}{path}", r.status_code, r.text[:300]))
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_llm_routes_answer_no_completion_without_the_apps_own_token(port, name):
    doc = yaml.safe_load((CONFIGS / name).read_text())
    apps = _apps_for_this_machine(doc)
    deploy(apps, port)
    for a in apps:
        wait_for(lambda a=a: app_running(a["name"]), 240, f"{name}: {a['name']} RUNNING")
    base = f"http://127.0.0.1:{port}"
    routes = httpx.get(f"{base}/-/routes", timeout=30).json()   # route_prefix -> app, as the proxy serves them
    llm_apps = [a for a in apps if a["import_path"] == LLM]
    assert llm_apps
    for a in llm_apps:
        routed = [p for p, app in routes.items() if app == a["name"]]
        if routed:
            assert a["args"].get("http_auth_token_env"), f"{name}: {a['name']} has route {routed} without auth"
        # its own route if it has one, and the path it would have under its name otherwise
        for prefix in {*routed, f"/{a['name']}"}:
            for auth in (None, *OTHER_KEYS):
                for what, status, text in _probe(base, prefix, auth):
                    assert status in (401, 403, 404), f"{name}: {what} with {auth!r}: {status} {text}"
                    assert '"choices"' not in text and "data:" not in text, f"{name}: {what}: {text}"
        if routed:
            # the route is real: with the app's own token it answers (a request that does not wake the model)
            r = httpx.get(f"{base}{routed[0].rstrip('/')}/v1/models", timeout=60,
                          headers={"authorization": f"Bearer {LLM_TOKEN}"})
            assert r.status_code == 200 and r.json()["data"][0]["id"] == a["args"]["served_model_id"]
    gateways = [a for a in apps if a["import_path"] == "serve_apps.gateway:app"]
    for g in gateways:
        # the gateway itself answers on its route (it reaches the LLM apps by handle, not HTTP)
        assert httpx.get(f"{base}{g['route_prefix'].rstrip('/')}/healthz", timeout=30).status_code == 200
        listen = g["args"].get("listen")
        if listen:
            # the gateway's own listener (the shipped AWS ingress) answers as the gateway: its health,
            # and for every LLM app's path, no completion without a gateway key
            own = f"http://127.0.0.1:{listen['port']}"
            wait_for(lambda: _listening(own), 60, f"{name}: gateway listener on {own}")
            routes = yaml.safe_load((CONFIGS / g["args"]["config_path"]).read_text())["routes"]
            for model in routes:            # every real route, so a skipped key check would answer
                for auth in (None, LLM_TOKEN):
                    for method, path, body in PROBES:
                        r = httpx.request(method, own + path, json={**body, "model": model} if body else None,
                                          headers={"authorization": f"Bearer {auth}"} if auth else {}, timeout=60)
                        want = 404 if path == "/thawline/state" else 401     # not a gateway path at all
                        assert r.status_code == want, f"{name} listener: {method} {path} {model} {auth!r}: {r.status_code} {r.text}"
                        assert '"choices"' not in r.text and "data:" not in r.text


def _listening(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _thawline_deploy_dry_run(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli.main", "deploy", str(path), "--dry-run"], cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT),
                               "THAWLINE_SNAPSHOT_STORE": "s3://b/snapshots", "THAWLINE_DEMO_DIR": "/tmp/x"},
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("name", SHIPPED)
def test_thawline_deploy_accepts_every_shipped_config(name):
    r = _thawline_deploy_dry_run(CONFIGS / name)
    assert r.returncode == 0, r.stderr


def test_thawline_deploy_refuses_an_llm_route_without_auth_in_one_line(tmp_path):
    doc = yaml.safe_load((CONFIGS / "gateway-serve.yaml").read_text())
    llm = next(a for a in doc["applications"] if a["import_path"] == LLM)
    path = tmp_path / "serve.yaml"
    for exposed in ("/tiny-llm", "missing"):   # a missing route_prefix is Serve's "/"
        bad = copy.deepcopy(doc)
        app = next(a for a in bad["applications"] if a["name"] == llm["name"])
        if exposed == "missing":
            del app["route_prefix"]
            bad["applications"] = [app]   # alone: with the gateway's "/" Serve itself refuses the pair
        else:
            app["route_prefix"] = exposed
        path.write_text(yaml.safe_dump(bad))
        r = _thawline_deploy_dry_run(path)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
        assert "exposes an LLM app over HTTP without auth" in r.stderr and "route_prefix: null" in r.stderr
        assert f"applications[{llm['name']}]" in r.stderr
    # either way of saying so is accepted: the app's own token, or the explicit opt-out
    for extra in ({"http_auth_token_env": "LLM_TOKEN"}, {"allow_unauthenticated_http": True}):
        ok = copy.deepcopy(doc)
        app = next(a for a in ok["applications"] if a["name"] == llm["name"])
        app["route_prefix"] = "/tiny-llm"
        app["args"].update(extra)
        path.write_text(yaml.safe_dump(ok))
        r = _thawline_deploy_dry_run(path)
        assert r.returncode == 0, r.stderr
