"""The dashboard page: server-rendered HTML around the SVG charts of svg.py. Pure (data in, str out).

`data` (built by gateway/ui/endpoint.py):
  days                 the period shown (days back from now)
  spend                {"route"|"key"|"provider"|"model": [{bucket, group, cost_usd, requests}]}
  traffic              {requests, ok, errors, fallbacks, rejected_429, cost_usd}
  budgets              [{scope, period, used, limit}]
  breakers             [{target, state}]
  local                [{app, state, warm_replicas, last_cold_start: {replica, phases_s} | None}]
"""
from __future__ import annotations

from html import escape

from gateway.cold_start_phases import PHASE_ORDER
from gateway.ui.svg import meter, stacked_bars, waterfall

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin-bottom:16px}
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.axis{font-size:10px;fill:#555}.legend{font-size:11px;fill:#333}.empty{color:#888;fill:#888;font-size:12px}
.state-open,.state-cold{color:#c0392b;font-weight:600}.state-half_open,.state-warming{color:#b7950b;font-weight:600}
.state-closed,.state-warm{color:#1e8449;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;
background:#fff;min-width:110px}.card b{display:block;font-size:22px}
"""
_DIM_TITLES = (("route", "Spend by route"), ("key", "Spend by key"), ("provider", "Spend by provider"),
               ("model", "Spend by model"))


def _usd(v: float) -> str:
    return f"${v:,.4f}"


def _cards(t: dict) -> str:
    items = [("requests", "Requests"), ("ok", "Answered"), ("fallbacks", "Fallbacks"),
             ("rejected_429", "429s"), ("errors", "5xx"), ("cost_usd", "Spend (USD)")]
    out = []
    for k, label in items:
        v = t.get(k, 0)
        shown = _usd(v) if k == "cost_usd" else f"{int(v):,}"
        out.append(f'<div class="card" data-metric="{k}"><b>{shown}</b>{escape(label)}</div>')
    return f'<div class="cards">{"".join(out)}</div>'


def _spend_table(rows: list[dict]) -> str:
    totals: dict[str, list] = {}
    for r in rows:
        t = totals.setdefault(str(r["group"]), [0.0, 0])
        t[0] += r["cost_usd"]
        t[1] += r["requests"]
    body = "".join(f'<tr><td>{escape(g)}</td><td class="num">{n:,}</td><td class="num">{_usd(c)}</td></tr>'
                   for g, (c, n) in sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0])))
    return f"<table><tr><th>group</th><th>requests</th><th>spend</th></tr>{body}</table>"


def _budgets(budgets: list[dict]) -> str:
    if not budgets:
        return '<p class="empty">no budgets configured</p>'
    rows = "".join(
        f'<tr><td>{escape(b["scope"])}</td><td>{escape(b["period"])}</td><td class="num">{_usd(b["used"])}</td>'
        f'<td class="num">{_usd(b["limit"])}</td><td>{meter(b["used"], b["limit"])}</td>'
        f'<td class="num">{(b["used"] / b["limit"] * 100 if b["limit"] else 0):.0f}%</td></tr>' for b in budgets)
    return f"<table><tr><th>scope</th><th>period</th><th>used</th><th>limit</th><th></th><th></th></tr>{rows}</table>"


def _breakers(breakers: list[dict]) -> str:
    if not breakers:
        return '<p class="empty">no targets</p>'
    rows = "".join(f'<tr><td>{escape(b["target"])}</td><td class="state-{escape(b["state"])}">{escape(b["state"])}'
                   f'</td></tr>' for b in breakers)
    return f"<table><tr><th>target</th><th>breaker</th></tr>{rows}</table>"


def _local(local: list[dict]) -> str:
    if not local:
        return '<p class="empty">no local (serve) models configured</p>'
    out = []
    for m in local:
        lcs = m.get("last_cold_start") or {}
        out.append(f'<h3>{escape(m["app"])} <span class="state-{escape(m["state"])}">{escape(m["state"])}</span> '
                   f'<small>{int(m.get("warm_replicas") or 0)} warm replica(s)</small></h3>')
        if lcs.get("replica"):
            out.append(f'<p><small>last cold start: replica {escape(str(lcs["replica"]))}</small></p>')
        out.append(waterfall(lcs.get("phases_s") or {}, PHASE_ORDER))
    return "".join(out)


def render(data: dict) -> str:
    spend = data.get("spend", {})
    charts = "".join(f'<section><h2>{escape(title)} (per day)</h2>{stacked_bars(spend.get(dim, []), title=title)}'
                     f'{_spend_table(spend.get(dim, []))}</section>' for dim, title in _DIM_TITLES)
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Thawline gateway</title>"
        "<meta name=\"viewport\" content=\"width=device-width\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>Thawline gateway</h1><p><small>last {int(data.get('days', 0))} days, UTC; this replica's "
        f"counters for traffic and breakers; spend from the ledger</small></p>"
        f"<section><h2>Traffic</h2>{_cards(data.get('traffic', {}))}</section>"
        f"{charts}"
        f"<section><h2>Budgets</h2>{_budgets(data.get('budgets', []))}</section>"
        f"<section><h2>Circuit breakers</h2>{_breakers(data.get('breakers', []))}</section>"
        f"<section><h2>Local models</h2>{_local(data.get('local', []))}</section>"
        "</body></html>")
