"""Dashboard sections about requests and cold starts: latency / TTFT percentiles per route, the
recent-request log (no prompt or answer text: the ledger has none), and each local model's
cold-start history. Pure (data in, HTML str out); page.py puts them on the page."""
from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from gateway.costs.activity import QUANTILES


def _ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms"


def _table(head: list[str], rows: list[list[str]], *, num_from: int) -> str:
    """A table in a horizontally scrolling box (a narrow screen scrolls the table, not the page);
    columns from `num_from` on are numbers (right-aligned)."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i >= num_from else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f'<div class="scroll"><table><tr>{th}</tr>{body}</table></div>'


def latency_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="empty">no requests in the last 24 hours</p>'
    head = ["route", "requests", "answered"] + [f"latency {n}" for n, _ in QUANTILES] + [f"TTFT {n}" for n, _ in QUANTILES]
    out = [[escape(r["route"]), f'{r["requests"]:,}', f'{r["answered"]:,}']
           + [_ms(r.get(f"latency_{n}_ms")) for n, _ in QUANTILES] + [_ms(r.get(f"ttft_{n}_ms")) for n, _ in QUANTILES]
           for r in rows]
    return f'<div data-section="latency">{_table(head, out, num_from=1)}</div>'


def recent_log(rows: list[dict]) -> str:
    if not rows:
        return '<p class="empty">no requests yet</p>'
    head = ["time (UTC)", "key", "route", "target", "status", "attempts", "latency", "TTFT", "tokens in/out", "cost"]
    out = [[escape(str(r["ts"])[11:19]), escape(str(r["key_id"])), escape(str(r["route"])), escape(str(r["target"])),
            f'<span class="st-{escape(str(r["status"]))}">{escape(str(r["status"]))}</span>',
            str(r.get("attempts") or 1), _ms(r.get("latency_ms")), _ms(r.get("ttft_ms")),
            f'{r.get("tokens_in") or 0}/{r.get("tokens_out") or 0}', f'${float(r.get("cost_usd") or 0):.6f}']
           for r in rows]
    return f'<div data-section="recent">{_table(head, out, num_from=5)}</div>'


def _when(c: dict) -> str:
    t = (c.get("marks") or {}).get("request")
    return datetime.fromtimestamp(float(t), tz=timezone.utc).strftime("%m-%d %H:%M:%S") if t else "–"


def cold_start_history(starts: list[dict], phases: tuple[str, ...]) -> str:
    """The newest cold starts, newest first: when, replica, how it started (tier: a warm-pool
    host or imports in the replica; first boot = the snapshot was written), seconds per phase."""
    if not starts:
        return '<p class="empty">no cold starts recorded</p>'
    head = ["requested (UTC)", "replica", "host", "first boot", "total"] + list(phases)
    out = []
    for c in starts:
        ph = c.get("phases_s") or {}
        out.append([escape(_when(c)), escape(str(c.get("replica", ""))[:12]), escape(str(c.get("host") or "–")),
                    "yes" if c.get("first_boot") else "no", f'{float(ph.get("total") or 0):.2f} s']
                   + [f"{float(ph[p]):.2f}" if p in ph else "–" for p in phases])
    return f'<div data-section="cold-starts">{_table(head, out, num_from=4)}</div>'
