"""GET /ui: the gateway's dashboard (admin only), rendered by page.py from live data.

Authentication, any one of (the admin key of gateway.yaml `server`):
  - `Authorization: Bearer <admin key>` (scripts, curl);
  - `/ui?key=<admin key>` (a browser): the answer also sets the cookie `thawline_admin`
    (HttpOnly, SameSite=Strict, Path=/ui, Secure over TLS) holding a signed session token that
    expires (session.py), never the key, so later visits need no key in the URL;
  - that cookie.
`?days=N` (1-90, default 14) sets the period shown.

Data: spend per day by route, key, provider and model from the ledger (CostTracker.series);
budgets (CostTracker.budgets and period_spend); traffic counters (requests, answered, 5xx,
fallbacks, 429s from limits and budgets) from this replica's Prometheus registry; breaker states
of every target; each local (serve) model's cold/warm state (its provider's readiness cache) and
last cold start (the readiness board, through an injected lookup).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from gateway.asgi import auth_header, request_headers
from gateway.errors import AuthError
from gateway.ui import session
from gateway.ui.page import render

COOKIE = "thawline_admin"
DIMS = (("route", "route"), ("key", "key_id"), ("provider", "target"), ("model", "model"))


def counters(registry: Any) -> dict[str, float]:
    """Traffic totals from a prometheus_client registry (this replica's counters)."""
    out = {"requests": 0.0, "ok": 0.0, "errors": 0.0, "fallbacks": 0.0, "rejected_429": 0.0}
    if registry is None:
        return out
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "thawline_gateway_requests_total":
                out["requests"] += s.value
                if s.labels.get("status") == "ok":
                    out["ok"] += s.value
                elif s.labels.get("status") == "error":
                    out["errors"] += s.value
            elif s.name == "thawline_gateway_fallbacks_total":
                out["fallbacks"] += s.value
            elif s.name in ("thawline_gateway_limiter_rejections_total", "thawline_gateway_budget_rejections_total"):
                out["rejected_429"] += s.value
    return out


class Dashboard:
    """`gateway` is the Gateway (keys, routes, providers, breakers, costs, metrics)."""

    def __init__(self, gateway: Any, *, cold_start_lookup: Callable[[str], Awaitable[dict | None]] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.gw = gateway
        if cold_start_lookup is None:
            from gateway.tracing import board_cold_start
            cold_start_lookup = board_cold_start
        self.cold_start_lookup = cold_start_lookup
        self.clock = clock

    def _session_key(self) -> bytes | None:
        """None when no admin key is configured (no session is valid then). Derived per call: a
        reconfigure may name another admin key."""
        digest = self.gw.keys.admin_digest
        if digest is None:
            return None
        return session.signing_key(session.admin_key_from_env(self.gw.cfg.server.admin_key_env), digest)

    def _auth(self, scope) -> str | None:
        """The cookie to set (a `?key=` login), or None; raises AuthError when not the admin."""
        keys = self.gw.keys
        if keys.is_admin(auth_header(request_headers(scope))):
            return None
        qs = parse_qs(scope.get("query_string", b"").decode())
        q = qs.get("key", [None])[0]
        if q and keys.is_admin(f"Bearer {q}"):
            return session.mint(self._session_key())
        raw = next((v for k, v in scope["headers"] if k == b"cookie"), None)
        if raw:
            c = SimpleCookie()
            try:
                c.load(raw.decode("latin-1"))
            except Exception:
                c = SimpleCookie()
            key = self._session_key()
            if COOKIE in c and key is not None and session.valid(key, c[COOKIE].value):
                return None
        raise AuthError("admin key required (Authorization: Bearer, ?key= or the thawline_admin cookie)",
                        code="admin_key_required")

    async def data(self, days: int) -> dict:
        now = self.clock()
        since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
        gw, costs = self.gw, self.gw.costs
        spend = {}
        for name, col in DIMS:
            spend[name] = await costs.series(column=col, since=since) if costs is not None else []
        metrics = gw.metrics
        if metrics is None:
            from gateway.metrics import METRICS
            metrics = METRICS
        traffic = counters(getattr(metrics, "registry", None))
        traffic["cost_usd"] = sum(r["cost_usd"] for r in spend["route"])
        budgets = []
        for scope, spec in sorted((getattr(costs, "budgets", None) or {}).items()):
            for period, dim, limit in (("day", "usd_day", spec.usd_per_day), ("month", "usd_month", spec.usd_per_month)):
                if limit is not None:
                    budgets.append({"scope": scope, "period": period, "used": costs.period_spend(scope, dim),
                                    "limit": limit})
        breakers = [{"target": t.id, "state": gw.breakers.state(t.id)}
                    for r in gw.routes.values() for tier in r.tiers for t in tier]
        local = []
        for name, p in sorted(gw.providers.items()):
            cfg = p.cfg
            if getattr(cfg, "type", None) != "serve":
                continue
            st = getattr(p, "_state", None) or {}
            try:
                lcs = await self.cold_start_lookup(cfg.app)
            except Exception:
                lcs = None
            local.append({"app": cfg.app, "provider": name, "state": st.get("state", "unknown"),
                          "warm_replicas": st.get("warm_replicas", 0), "last_cold_start": lcs})
        return {"days": days, "spend": spend, "traffic": traffic, "budgets": budgets, "breakers": breakers,
                "local": local}

    async def handle(self, scope, receive, send) -> None:
        login = self._auth(scope)
        qs = parse_qs(scope.get("query_string", b"").decode())
        try:
            days = min(90, max(1, int(qs.get("days", ["14"])[0])))
        except ValueError:
            days = 14
        body = render(await self.data(days)).encode()
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"),
                   (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; img-src data:")]
        if login is not None:
            headers.append((b"set-cookie", session.cookie_header(COOKIE, login, session.over_tls(scope))))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
