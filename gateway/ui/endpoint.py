"""GET /ui: the gateway's dashboard (admin only), rendered by page.py from live data.

Authentication, any one of (the admin key of gateway.yaml `server`):
  - `Authorization: Bearer <admin key>` (scripts, curl);
  - `/ui?key=<admin key>` (a browser): the answer also sets the cookie `thawline_admin`
    (HttpOnly, SameSite=Strict, Path=/ui, Secure over TLS) holding a signed session token that
    expires (session.py), never the key, so later visits need no key in the URL;
  - that cookie.
`?days=N` (1-90, default 14) sets the period shown; `?refresh=N` reloads the page every N s
(default 15, 0: never, at least 5).

Data: spend per day by route, key, provider and model from the ledger (CostTracker.series; idle
replica time is its own line, as in /v1/usage); requests, tokens and spend per LoRA adapter over
the period (CostTracker.query, group_by=adapter; the base model is its own row); latency / TTFT
percentiles per route and the recent-request log from the ledger rows of every replica
(CostTracker.activity); traffic counters (requests, answered, 5xx, fallbacks, 429s) summed over every replica by the shared ledger actor
(gateway/traffic.py; this replica's own registry when there is no actor); budgets
(CostTracker.budgets and period_spend); breaker states of every target; each local (serve)
model's cold/warm state (its provider's readiness cache), last cold start and cold-start history
(the readiness board, through injected lookups).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from gateway.asgi import auth_header, request_headers
from gateway.errors import AuthError
from gateway.ui import session
from gateway.traffic import counters
from gateway.ui.page import render

COOKIE = "thawline_admin"
DIMS = (("route", "route"), ("key", "key_id"), ("provider", "target"), ("model", "model"))
RECENT_N = 50               # rows of the recent-request log
HISTORY_N = 10              # cold starts shown per local model
Lookup = Callable[[str], Awaitable[Any]]


class Dashboard:
    """`gateway` is the Gateway (keys, routes, providers, breakers, costs, metrics)."""

    def __init__(self, gateway: Any, *, cold_start_lookup: Lookup | None = None,
                 cold_history_lookup: Lookup | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.gw = gateway
        from gateway.tracing import board_cold_start, board_cold_starts
        self.cold_start_lookup = cold_start_lookup or board_cold_start
        self.cold_history_lookup = cold_history_lookup or board_cold_starts
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

    async def data(self, days: int, refresh_s: int = 0) -> dict:
        now = self.clock()
        since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
        gw, costs = self.gw, self.gw.costs
        spend = {}
        for name, col in DIMS:
            spend[name] = await costs.series(column=col, since=since) if costs is not None else []
        activity = (await costs.activity(since=now - timedelta(hours=24), recent_n=RECENT_N) if costs is not None
                    else {"latency": [], "recent": [], "traffic": None})
        traffic = activity.get("traffic")
        if traffic is None:       # no shared actor (an in-process gateway): this replica's own counters
            metrics = gw.metrics
            if metrics is None:
                from gateway.metrics import METRICS
                metrics = METRICS
            traffic = {**counters(getattr(metrics, "registry", None)), "replicas": None}
        adapters = await costs.query(group_by="adapter", since=since) if costs is not None else []
        today = now.strftime("%Y-%m-%d")
        traffic = {**traffic, "cost_usd": sum(r["cost_usd"] for r in spend["route"]),
                   "cost_today_usd": sum(r["cost_usd"] for r in spend["route"] if r["bucket"] == today)}
        return {"days": days, "refresh_s": refresh_s, "spend": spend, "traffic": traffic,
                "latency": activity["latency"], "recent": activity["recent"], "budgets": self._budgets(costs),
                "adapters": adapters,
                "breakers": [{"target": t.id, "state": gw.breakers.state(t.id)}
                             for r in gw.routes.values() for t in r.all_targets()],
                "local": await self._local()}

    @staticmethod
    def _budgets(costs: Any) -> list[dict]:
        out = []
        budgets = {**(getattr(costs, "budgets", None) or {}), **(getattr(costs, "adapter_budgets", None) or {})}
        for scope, spec in sorted(budgets.items()):
            for period, dim, limit in (("day", "usd_day", spec.usd_per_day), ("month", "usd_month", spec.usd_per_month)):
                if limit is not None:
                    out.append({"scope": scope, "period": period, "used": costs.period_spend(scope, dim),
                                "limit": limit})
        return out

    async def _local(self) -> list[dict]:
        local = []
        for name, p in sorted(self.gw.providers.items()):
            cfg = p.cfg
            if getattr(cfg, "type", None) != "serve":
                continue
            st = getattr(p, "_state", None) or {}
            lcs, history = await self._lookup(self.cold_start_lookup, cfg.app), \
                await self._lookup(self.cold_history_lookup, cfg.app)
            if not history and lcs:
                history = [lcs]
            local.append({"app": cfg.app, "provider": name, "state": st.get("state", "unknown"),
                          "warm_replicas": st.get("warm_replicas", 0), "last_cold_start": lcs,
                          "cold_starts": list(history or [])[:HISTORY_N]})
        return local

    @staticmethod
    async def _lookup(fn: Lookup, app: str) -> Any:
        try:
            return await fn(app)
        except Exception:        # the board may be restarting: the page shows without it
            return None

    async def handle(self, scope, receive, send) -> None:
        login = self._auth(scope)
        qs = parse_qs(scope.get("query_string", b"").decode())
        days = _int_param(qs, "days", 14, 1, 90)
        refresh = _int_param(qs, "refresh", 15, 0, 3600)
        body = render(await self.data(days, refresh if refresh == 0 else max(5, refresh))).encode()
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"),
                   (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; img-src data:")]
        if login is not None:
            headers.append((b"set-cookie", session.cookie_header(COOKIE, login, session.over_tls(scope))))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _int_param(qs: dict, name: str, default: int, lo: int, hi: int) -> int:
    try:
        return min(hi, max(lo, int(qs.get(name, [str(default)])[0])))
    except ValueError:
        return default
