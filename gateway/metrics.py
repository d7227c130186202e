"""Prometheus metrics of one gateway replica (prometheus_client, a registry of our own).

Each replica serves its own registry on GET /metrics. Behind Serve's proxy that scrape reaches one
replica at a time, so every count is ALSO exported through Ray's metrics (ray.util.metrics, when
the gateway runs in a Ray worker): each node's metrics agent exports every replica's series on the
node's metrics export port (cluster/aws-gpu.yaml: 8080), and one Prometheus scrape of the nodes
sees them all, next to vLLM's engine metrics (serve_apps/llm/engine_host.py) and Serve's own. Ray
prefixes the names with `ray_` (thawline_gateway_requests -> ray_thawline_gateway_requests_total);
cluster/grafana/thawline.json charts those. The Ray series also carry the client key id (`key`)
on requests and spend, which the per-replica registry leaves out.

A private registry (not the global default) keeps tests and several gateways in one process from
colliding, and keeps Ray's own metrics out of the gateway's scrape.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BREAKER_STATES = ("closed", "half_open", "open")

# TTFT buckets: a warm hosted model answers in 0.2-2 s, a cold local one may take a minute.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


# (name, description, tag keys) of every series exported through Ray; names match the registry's.
RAY_COUNTERS = {
    "requests": ("thawline_gateway_requests", "Finished requests.", ("route", "target", "status", "key")),
    "tokens": ("thawline_gateway_tokens", "Tokens by kind (input includes cached).", ("route", "target", "model", "kind")),
    "cost": ("thawline_gateway_cost_usd", "Spend in USD.", ("route", "target", "model", "key")),
    "fallbacks": ("thawline_gateway_fallbacks", "Moves down a route's chain.", ("route", "from_target", "reason")),
    "rejections": ("thawline_gateway_limiter_rejections", "Requests refused by a limit.", ("scope", "dim")),
    "budget_rejections": ("thawline_gateway_budget_rejections", "Requests refused by a budget.", ("scope",)),
}
RAY_GAUGES = {"breaker": ("thawline_gateway_breaker_state", "1 for the breaker's current state.", ("target", "state"))}
RAY_HISTOGRAMS = {"ttft": ("thawline_gateway_ttft_seconds", "Time to first token (streams) or to the response.",
                           ("route", "target"))}


class CounterBatch:
    """Counter increments summed per series, handed to `sink(what, total, tags)` at most every
    `flush_s` (pure: the Ray export below is its sink).

    Why: each ray.util.metrics call validates and copies its tags and crosses into Ray's
    recorder; several of them per request were a measurable share of a replica's CPU, while
    Ray's metrics agents export only every few seconds anyway."""

    def __init__(self, sink: Callable[[str, float, dict[str, str]], None],
                 tag_keys: dict[str, tuple[str, ...]], flush_s: float = 1.0) -> None:
        self.sink, self.tag_keys, self.flush_s = sink, tag_keys, flush_s
        self.pending: dict[tuple, float] = {}      # (what, *tag values in tag-key order) -> sum
        self._timer: asyncio.TimerHandle | None = None

    def add(self, key: tuple, value: float) -> None:
        """Count `value` on the series `key` = (what, *tag values); handed over within flush_s."""
        p = self.pending
        p[key] = p.get(key, 0) + value
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.flush_s, self.flush)
            except RuntimeError:        # no event loop (a synchronous caller): hand it over now
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self.pending = self.pending, {}
        for (what, *values), total in pending.items():
            self.sink(what, total, dict(zip(self.tag_keys[what], values)))


class _RayExport:
    """The same counts through ray.util.metrics (aggregated over replicas by Ray's metrics agents):
    counters through a CounterBatch; gauges and histogram observations at once (gauges change
    rarely; an observation cannot be summed)."""

    def __init__(self) -> None:
        from ray.util import metrics as rm

        self.m = {k: rm.Counter(n, description=d, tag_keys=t) for k, (n, d, t) in RAY_COUNTERS.items()}
        self.m.update({k: rm.Gauge(n, description=d, tag_keys=t) for k, (n, d, t) in RAY_GAUGES.items()})
        self.m.update({k: rm.Histogram(n, description=d, boundaries=list(_TTFT_BUCKETS), tag_keys=t)
                       for k, (n, d, t) in RAY_HISTOGRAMS.items()})
        self.counts = CounterBatch(self.inc, {k: t for k, (_, _, t) in RAY_COUNTERS.items()})
        self.add, self.flush = self.counts.add, self.counts.flush

    def inc(self, what: str, value: float, tags: dict[str, str]) -> None:
        self.m[what].inc(value, tags=tags)

    def set(self, what: str, value: float, **tags: str) -> None:
        self.m[what].set(value, tags=tags)

    def observe(self, what: str, value: float, **tags: str) -> None:
        self.m[what].observe(value, tags=tags)


def _in_ray_worker() -> bool:
    # No import of ray here: a gateway outside Ray (tests, a plain ASGI server) never loads it.
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, ray_export: bool | None = None):
        self.registry = registry or CollectorRegistry()
        # None: decided at the first count (export when this process is a Ray worker).
        self._ray_export = ray_export
        self._ray: _RayExport | None = None
        self._cache: dict[tuple, tuple] = {}
        self._breaker_last: dict[str, str] = {}
        r = self.registry
        self.requests = Counter("thawline_gateway_requests", "Finished requests.",
                                ["route", "target", "status"], registry=r)
        self.tokens = Counter("thawline_gateway_tokens", "Tokens by kind (input includes cached).",
                              ["route", "target", "model", "kind"], registry=r)
        self.cost = Counter("thawline_gateway_cost_usd", "Spend in USD.", ["route", "target", "model"], registry=r)
        self.fallbacks = Counter("thawline_gateway_fallbacks", "Moves down a route's chain.",
                                 ["route", "from_target", "reason"], registry=r)
        self.breaker = Gauge("thawline_gateway_breaker_state", "1 for the breaker's current state.",
                             ["target", "state"], registry=r)
        self.rejections = Counter("thawline_gateway_limiter_rejections", "Requests refused by a limit.",
                                  ["scope", "dim"], registry=r)
        self.budget_rejections = Counter("thawline_gateway_budget_rejections", "Requests refused by a budget.",
                                         ["scope"], registry=r)
        self.ttft = Histogram("thawline_gateway_ttft_seconds", "Time to first token (streams) or to the "
                              "response (non-streamed).", ["route", "target"], buckets=_TTFT_BUCKETS, registry=r)

    def _children(self, route: str, target: str, model: str, status: str) -> tuple:
        # .labels() validates and hashes on every call; the label sets are few, so their child
        # metrics are looked up once and kept.
        key = (route, target, model, status)
        ch = self._cache.get(key)
        if ch is None:
            ch = self._cache[key] = (
                self.requests.labels(route, target, status), self.tokens.labels(route, target, model, "input"),
                self.tokens.labels(route, target, model, "output"), self.tokens.labels(route, target, model, "cached"),
                self.cost.labels(route, target, model), self.ttft.labels(route, target))
        return ch

    def _export(self) -> _RayExport | None:
        if self._ray is None and self._ray_export is not False:
            if self._ray_export is None:
                self._ray_export = _in_ray_worker()
            if self._ray_export:
                self._ray = _RayExport()
        return self._ray

    def record_request(self, *, route: str, target: str, model: str, status: str, tokens_in: int,
                       tokens_out: int, tokens_cached: int, cost_usd: float, ttft_s: float | None,
                       key: str = "-") -> None:
        ray = self._export()
        if ray is not None:
            # tag values in RAY_COUNTERS' tag-key order
            ray.add(("requests", route, target, status, key), 1)
            if tokens_in:
                ray.add(("tokens", route, target, model, "input"), tokens_in)
            if tokens_out:
                ray.add(("tokens", route, target, model, "output"), tokens_out)
            if tokens_cached:
                ray.add(("tokens", route, target, model, "cached"), tokens_cached)
            if cost_usd:
                ray.add(("cost", route, target, model, key), cost_usd)
            if ttft_s is not None:
                ray.observe("ttft", ttft_s, route=route, target=target)
        req, tin, tout, tcached, cost, ttft = self._children(route, target, model, status)
        req.inc()
        if tokens_in:
            tin.inc(tokens_in)
        if tokens_out:
            tout.inc(tokens_out)
        if tokens_cached:
            tcached.inc(tokens_cached)
        if cost_usd:
            cost.inc(cost_usd)
        if ttft_s is not None:
            ttft.observe(ttft_s)

    def fallback(self, route: str, from_target: str, reason: str) -> None:
        self.fallbacks.labels(route, from_target, reason).inc()
        if (ray := self._export()) is not None:
            ray.add(("fallbacks", route, from_target, reason), 1)

    def breaker_state(self, target: str, state: str) -> None:
        # Called after every attempt; only a change touches the gauges.
        if self._breaker_last.get(target) == state:
            return
        self._breaker_last[target] = state
        ray = self._export()
        for s in _BREAKER_STATES:
            self.breaker.labels(target, s).set(1.0 if s == state else 0.0)
            if ray is not None:
                ray.set("breaker", 1.0 if s == state else 0.0, target=target, state=s)

    def limiter_rejection(self, scope: str, dim: str) -> None:
        self.rejections.labels(scope, dim).inc()
        if (ray := self._export()) is not None:
            ray.add(("rejections", scope, dim), 1)

    def budget_rejection(self, scope: str) -> None:
        self.budget_rejections.labels(scope).inc()
        if (ray := self._export()) is not None:
            ray.add(("budget_rejections", scope), 1)

    def flush(self) -> None:
        """Hand the locally summed counts to Ray now (graceful shutdown)."""
        if self._ray is not None:
            self._ray.flush()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


METRICS = GatewayMetrics()
