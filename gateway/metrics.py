"""Prometheus metrics of one gateway replica (prometheus_client, a registry of our own).

Each replica serves its own registry on GET /metrics; Prometheus sums across replicas. A
private registry (not the global default) keeps tests and several gateways in one process from
colliding, and keeps Ray's own metrics out of the gateway's scrape.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BREAKER_STATES = ("closed", "half_open", "open")

# TTFT buckets: a warm hosted model answers in 0.2-2 s, a cold local one may take a minute.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
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

    def record_request(self, *, route: str, target: str, model: str, status: str, tokens_in: int,
                       tokens_out: int, tokens_cached: int, cost_usd: float, ttft_s: float | None) -> None:
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

    def breaker_state(self, target: str, state: str) -> None:
        # Called after every attempt; only a change touches the gauges.
        if self._breaker_last.get(target) == state:
            return
        self._breaker_last[target] = state
        for s in _BREAKER_STATES:
            self.breaker.labels(target, s).set(1.0 if s == state else 0.0)

    def limiter_rejection(self, scope: str, dim: str) -> None:
        self.rejections.labels(scope, dim).inc()

    def budget_rejection(self, scope: str) -> None:
        self.budget_rejections.labels(scope).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


METRICS = GatewayMetrics()
