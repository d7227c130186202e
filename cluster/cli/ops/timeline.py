"""`thawline status --timeline MODEL`: the last cold start's phases as a waterfall.

The data is the readiness board's `last_cold_start` (recorded by the LLM router at the first
token of a request that waited for a cold start: serve_apps/llm/router.py `_first_token`), the
same per-phase seconds the `thawline_cold_start_phase_seconds` histogram observes. Phases run
back to back in gateway/cold_start_phases.py's PHASE_ORDER, so each bar starts where the previous
one ended. Drawing is pure (testable without Ray); `fetch` talks to the cluster.
"""
from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from gateway.cold_start_phases import TOTAL, ordered

_COLORS = ("cyan", "blue", "magenta", "yellow", "green", "red")


def waterfall(app: str, cold_start: dict[str, Any], width: int = 48) -> Table:
    phases = cold_start.get("phases_s") or {}
    steps = ordered(phases)
    total = float(phases.get(TOTAL) or sum(s for _, s in steps) or 0.0)
    span = max(total, sum(s for _, s in steps), 1e-9)
    title = f"Last cold start of {app}" + (f" (replica {cold_start['replica']})" if cold_start.get("replica") else "")
    table = Table(title=title, show_footer=True)
    table.add_column("phase", footer="total")
    table.add_column("start (s)", justify="right")
    table.add_column("seconds", justify="right", footer=f"{total:.2f}")
    table.add_column("", no_wrap=True)
    at = 0.0
    for i, (name, secs) in enumerate(steps):
        lead = int(round(at / span * width))
        length = max(1, int(round(secs / span * width))) if secs > 0 else 0
        bar = Text(" " * lead)
        bar.append("█" * min(length, width - lead) if length else "│", style=_COLORS[i % len(_COLORS)])
        table.add_row(name, f"{at:.2f}", f"{secs:.2f}", bar)
        at += secs
    return table


def fetch(address: str | None, model: str, timeout_s: float = 30.0) -> tuple[str, dict[str, Any]]:
    """(app name, last cold start) of MODEL: an app name, else the app whose name starts with it
    (the route `tiny` is served by the app `tiny-llm` in the shipped configs)."""
    from cluster.cli.errors import CLIError
    from cluster.cli.ops.ray_connect import use_token_auth_if_available

    use_token_auth_if_available()
    import ray
    from ray import serve

    from gateway.names import NAMESPACE, READINESS_ACTOR

    if not ray.is_initialized():
        ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
    try:
        board = ray.get_actor(READINESS_ACTOR, namespace=NAMESPACE)
    except ValueError:
        raise CLIError("no readiness board on this cluster: no LLM app has started yet") from None
    try:
        apps = sorted(serve.status().applications)
    except Exception:  # noqa: BLE001 - Serve not running: only the exact name can match
        apps = []
    candidates = [model] + [a for a in apps if a != model and a.startswith(model)]
    for app in candidates:
        cold = ray.get(board.last_cold_start.remote(app), timeout=timeout_s)
        if cold:
            return app, cold
    raise CLIError(f"no cold start recorded for {model!r} (looked at: {', '.join(candidates)}); "
                   f"send it a request while it is at zero replicas")
