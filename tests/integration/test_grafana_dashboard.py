"""cluster/grafana/thawline.json: a Grafana dashboard whose every panel has a Prometheus
datasource and targets, and whose every metric name is one the code exports through Ray
(gateway/metrics.py, serve_apps/llm/*.py) or vLLM's own stat logger (exported by
RayPrometheusStatLogger: `vllm:x` becomes `ray_vllm_x`)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from gateway.metrics import RAY_COUNTERS, RAY_GAUGES, RAY_HISTOGRAMS
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

DASHBOARD = REPO_ROOT / "cluster" / "grafana" / "thawline.json"
_METRIC = re.compile(r"\b(ray_[a-z0-9_]+)")
_PROMQL_WORDS = {"by", "rate", "sum", "max", "histogram_quantile"}


def _exported_names() -> set[str]:
    names = {n for table in (RAY_COUNTERS, RAY_GAUGES, RAY_HISTOGRAMS) for n, _, _ in table.values()}
    for path in (REPO_ROOT / "serve_apps" / "llm").glob("*.py"):
        names |= set(re.findall(r'metrics\.(?:Counter|Gauge|Histogram)\(\s*"([a-z0-9_]+)"', path.read_text()))
    vllm = Path(importlib.util.find_spec("vllm").origin).parent / "v1" / "metrics" / "loggers.py"
    names |= {n.replace(":", "_") for n in re.findall(r'name="(vllm:[a-z0-9_]+)"', vllm.read_text())}
    return names


def _base(metric: str) -> str:
    name = metric.removeprefix("ray_")
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_dashboard_loads_and_every_panel_queries_prometheus():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    assert dash["panels"]
    for p in dash["panels"]:
        assert p["datasource"]["type"] == "prometheus", p["title"]
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("cold start", "cold / warm", "spend by route", "spend by key", "fallback", "rejection", "kv-cache", "queue"):
        assert topic in titles, topic


def test_every_metric_the_dashboard_reads_is_exported_by_the_code():
    exported = _exported_names()
    assert {"thawline_cold_start_seconds", "thawline_llm_replica_state", "vllm_kv_cache_usage_perc"} <= exported
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    used = {_base(m) for e in exprs for m in _METRIC.findall(e)} - _PROMQL_WORDS
    assert used and not used - exported, f"not exported by the code: {sorted(used - exported)}"
