"""Charts as plain inline SVG strings, drawn server-side (no JavaScript, nothing from a CDN). Pure."""
from __future__ import annotations

from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")


def _fmt_usd(v: float) -> str:
    return f"${v:,.2f}" if v >= 1 else f"${v:.4f}"


def stacked_bars(rows: list[dict], *, title: str, width: int = 640, height: int = 220, top: int = 8) -> str:
    """Spend over time: one bar per bucket, stacked by group. rows: [{bucket, group, cost_usd}].
    The `top` most expensive groups get their own colour; the rest are summed as "other"."""
    if not rows:
        return f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="40" ' \
               f'viewBox="0 0 {width} 40" xmlns="http://www.w3.org/2000/svg">' \
               f'<text x="8" y="24" class="empty">no spend in this period</text></svg>'
    totals: dict[str, float] = {}
    for r in rows:
        totals[str(r["group"])] = totals.get(str(r["group"]), 0.0) + r["cost_usd"]
    groups = sorted(totals, key=lambda g: -totals[g])
    keep = groups[:top]
    buckets = sorted({r["bucket"] for r in rows})
    stack: dict[str, dict[str, float]] = {b: {} for b in buckets}
    for r in rows:
        g = str(r["group"]) if str(r["group"]) in keep else "other"
        stack[r["bucket"]][g] = stack[r["bucket"]].get(g, 0.0) + r["cost_usd"]
    names = keep + (["other"] if len(groups) > top else [])
    peak = max(sum(v.values()) for v in stack.values()) or 1.0
    left, bottom, legend_w = 64, 24, 150
    plot_w, plot_h = width - left - legend_w, height - bottom - 8
    bw = plot_w / len(buckets)
    out = [f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
           f'<line x1="{left}" y1="{8 + plot_h}" x2="{left + plot_w}" y2="{8 + plot_h}" stroke="#888"/>',
           f'<text x="{left - 4}" y="14" text-anchor="end" class="axis">{_fmt_usd(peak)}</text>',
           f'<text x="{left - 4}" y="{8 + plot_h}" text-anchor="end" class="axis">$0</text>']
    for i, b in enumerate(buckets):
        y = 8 + plot_h
        x = left + i * bw + bw * 0.1
        for j, g in enumerate(names):
            v = stack[b].get(g, 0.0)
            if v <= 0:
                continue
            h = v / peak * plot_h
            y -= h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * 0.8:.1f}" height="{h:.1f}" '
                       f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(b)} {escape(g)}: '
                       f'{_fmt_usd(v)}</title></rect>')
        if len(buckets) <= 16 or i % max(1, len(buckets) // 8) == 0:
            out.append(f'<text x="{x + bw * 0.4:.1f}" y="{height - 6}" text-anchor="middle" class="axis">'
                       f'{escape(b[5:])}</text>')
    for j, g in enumerate(names):
        y = 14 + j * 16
        out.append(f'<rect x="{width - legend_w + 8}" y="{y - 9}" width="10" height="10" '
                   f'fill="{PALETTE[j % len(PALETTE)]}"/><text x="{width - legend_w + 22}" y="{y}" class="legend">'
                   f'{escape(g[:18])} {_fmt_usd(totals.get(g, sum(totals[x] for x in groups[top:])))}</text>')
    out.append("</svg>")
    return "".join(out)


def meter(used: float, limit: float, *, width: int = 200) -> str:
    """A budget's use as a horizontal bar (red from 90 %)."""
    frac = 0.0 if limit <= 0 else min(1.0, used / limit)
    colour = "#e15759" if frac >= 0.9 else ("#edc948" if frac >= 0.7 else "#59a14f")
    return (f'<svg class="meter" width="{width}" height="14" role="img" aria-label="{frac * 100:.0f}% used">'
            f'<rect width="{width}" height="14" fill="#eee"/><rect width="{frac * width:.1f}" height="14" '
            f'fill="{colour}"/></svg>')


def waterfall(phases: dict[str, float], order: tuple[str, ...], *, width: int = 640) -> str:
    """A cold start's phases laid end to end, one row each (seconds)."""
    steps = [(p, float(phases[p])) for p in order if p in phases]
    if not steps:
        return '<p class="empty">no cold start recorded</p>'
    total = float(phases.get("total") or sum(s for _, s in steps)) or 1.0
    left, row = 180, 20  # room for the longest phase name (engine_start_with_weights)
    plot = width - left - 70
    h = row * len(steps) + 24
    out = [f'<svg class="waterfall" width="{width}" height="{h}" viewBox="0 0 {width} {h}" role="img" '
           f'aria-label="cold start waterfall" xmlns="http://www.w3.org/2000/svg">']
    t = 0.0
    for i, (name, secs) in enumerate(steps):
        x, w, y = left + t / total * plot, max(1.0, secs / total * plot), i * row + 4
        out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" class="axis">{escape(name)}</text>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{PALETTE[i % len(PALETTE)]}">'
                   f'<title>{escape(name)}: {secs:.3f} s</title></rect>'
                   f'<text x="{x + w + 4:.1f}" y="{y + 12}" class="axis">{secs:.2f} s</text>')
        t += secs
    out.append(f'<text x="{left}" y="{row * len(steps) + 20}" class="axis">total {total:.2f} s</text></svg>')
    return "".join(out)
