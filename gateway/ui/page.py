"""The dashboard page: server-rendered HTML around the SVG charts of svg.py. Pure (data in, str out).

`data` (built by gateway/ui/endpoint.py):
  days                 the period shown (days back from now)
  spend                {"route"|"key"|"provider"|"model": [{bucket, group, cost_usd, requests}]}
  traffic              {requests, ok, errors, fallbacks, rejected_429, cost_usd, cost_today_usd,
                        replicas: how many replicas' counters are summed (None: this replica's only)}
  latency              [{route, requests, answered, latency_p50_ms.., ttft_p50_ms..}] (last 24 h)
  recent               [{ts, key_id, route, target, status, attempts, latency_ms, ttft_ms, tokens_in,
                        tokens_out, cost_usd}] newest first (no prompt or answer text)
  adapters             [{group: adapter (None: the base model), requests, tokens_in, tokens_out, cost_usd, ...}]
                       (/v1/usage?group_by=adapter over the period)
  budgets              [{scope, period, used, limit}]
  breakers             [{target, state}]
  local                [{app, state, warm_replicas, last_cold_start: {replica, phases_s} | None,
                        cold_starts: [the same, newest first]}]
  refresh_s            reload the page this often (0: never)
"""
from __future__ import annotations

from html import escape

from gateway.cold_start_phases import PHASE_ORDER
from gateway.costs.usage import IDLE_GROUP

from gateway.ui.activity_view import cold_start_history, latency_table, recent_log
from gateway.ui.svg import meter, stacked_bars, waterfall

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
svg.chart,svg.waterfall{max-width:100%;height:auto}.scroll{overflow-x:auto;max-width:100%}
@media (max-width:600px){body{margin:8px}section{padding:8px}.card{min-width:80px;padding:6px 8px}
.card b{font-size:18px}td,th{padding:2px 6px}}
.st-error,.st-cancelled{color:#c0392b}
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
             ("rejected_429", "429s"), ("errors", "5xx"), ("cost_today_usd", "Spend today (USD)"),
             ("cost_usd", "Spend (USD)")]
    out = []
    for k, label in items:
        v = t.get(k, 0)
        shown = _usd(v) if k.startswith("cost") else f"{int(v):,}"
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
    return f'<div class="scroll"><table><tr><th>group</th><th>requests</th><th>spend</th></tr>{body}</table></div>'


BASE_MODEL = "(base model)"


def _adapters(rows: list[dict]) -> str:
    """Requests, tokens and spend per LoRA adapter (`<route>:<adapter>` requests)."""
    if not any(r.get("group") is not None and r.get("group") != IDLE_GROUP for r in rows):
        return '<p class="empty">no adapter requests in this period</p>'
    body = "".join(
        f'<tr><td>{escape(BASE_MODEL if r.get("group") is None else str(r["group"]))}</td>'
        f'<td class="num">{int(r.get("requests") or 0):,}</td><td class="num">{int(r.get("tokens_in") or 0):,}</td>'
        f'<td class="num">{int(r.get("tokens_out") or 0):,}</td><td class="num">{_usd(r.get("cost_usd") or 0.0)}</td>'
        f'</tr>' for r in rows)
    return (f'<div class="scroll"><table data-table="adapters"><tr><th>adapter</th><th>requests</th><th>tokens in</th>'
            f'<th>tokens out</th><th>spend</th></tr>{body}</table></div>')


def _budgets(budgets: list[dict]) -> str:
    if not budgets:
        return '<p class="empty">no budgets configured</p>'
    rows = "".join(
        f'<tr><td>{escape(b["scope"])}</td><td>{escape(b["period"])}</td><td class="num">{_usd(b["used"])}</td>'
        f'<td class="num">{_usd(b["limit"])}</td><td>{meter(b["used"], b["limit"])}</td>'
        f'<td class="num">{(b["used"] / b["limit"] * 100 if b["limit"] else 0):.0f}%</td></tr>' for b in budgets)
    return (f'<div class="scroll"><table><tr><th>scope</th><th>period</th><th>used</th><th>limit</th><th></th>'
            f'<th></th></tr>{rows}</table></div>')


def _breakers(breakers: list[dict]) -> str:
    if not breakers:
        return '<p class="empty">no targets</p>'
    rows = "".join(f'<tr><td>{escape(b["target"])}</td><td class="state-{escape(b["state"])}">{escape(b["state"])}'
                   f'</td></tr>' for b in breakers)
    return f'<div class="scroll"><table><tr><th>target</th><th>breaker</th></tr>{rows}</table></div>'


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
        out.append(f'<h4>Cold-start history</h4>{cold_start_history(m.get("cold_starts") or [], PHASE_ORDER)}')
    return "".join(out)


def _traffic_note(t: dict) -> str:
    n = t.get("replicas")
    who = "this replica's counters" if n is None else f"summed over {int(n)} replica process(es)"
    return f"<p><small>{who}; spend includes {escape(IDLE_GROUP)} as in <code>thawline usage</code></small></p>"


def render(data: dict) -> str:
    spend = data.get("spend", {})
    refresh = int(data.get("refresh_s") or 0)
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh > 0 else ""
    charts = "".join(f'<section><h2>{escape(title)} (per day)</h2>{stacked_bars(spend.get(dim, []), title=title)}'
                     f'{_spend_table(spend.get(dim, []))}</section>' for dim, title in _DIM_TITLES)
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Thawline gateway</title>"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"{meta}"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>Thawline gateway</h1><p><small>last {int(data.get('days', 0))} days, UTC; spend, latency and "
        f"requests from the ledger (every replica); breakers as this replica sees them"
        f"{f'; refreshes every {refresh} s' if refresh > 0 else ''}</small></p>"
        f"<section><h2>Traffic</h2>{_cards(data.get('traffic', {}))}{_traffic_note(data.get('traffic', {}))}</section>"
        f"<section><h2>Latency per route (last 24 h)</h2>{latency_table(data.get('latency', []))}</section>"
        f"<section><h2>Recent requests</h2>{recent_log(data.get('recent', []))}</section>"
        f"{charts}"
        f"<section><h2>Spend by adapter</h2>{_adapters(data.get('adapters', []))}</section>"
        f"<section><h2>Budgets</h2>{_budgets(data.get('budgets', []))}</section>"
        f"<section><h2>Circuit breakers</h2>{_breakers(data.get('breakers', []))}</section>"
        f"<section><h2>Local models</h2>{_local(data.get('local', []))}</section>"
        "</body></html>")
