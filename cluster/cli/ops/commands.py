"""Operator commands on the top-level `thawline` app: deploy, status, usage, chat.

`register(app)` is called by cluster/cli/main.py. Heavy imports (ray) happen inside the
commands so `thawline --help` stays fast. Every failure is one `error: ...` line and exit 1.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from cluster.cli.errors import CLIError, one_line_errors
from gateway.names import ADMIN_KEY_ENV, API_KEY_ENV, BASE_URL_ENV

_BASE_URL_HELP = f"Gateway base URL, as for the openai SDK (env {BASE_URL_ENV}; default http://127.0.0.1:8000/v1)."


# ------------------------------------------------------------------------------- pure helpers

def _console(stderr: bool = False) -> Console:
    """Piped output (grep, CI logs) gets wide tables instead of rows wrapped at 80 columns."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=200)


_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """`--since` as epoch seconds: a duration back from now (`90s`, `30m`, `24h`, `7d`), an ISO
    date/time (UTC if no zone), or epoch seconds."""
    if value is None or value == "":
        return None
    now = time.time() if now is None else now
    v = value.strip()
    m = _REL.fullmatch(v)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(v)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"--since {value!r}: use a duration like 30m/24h/7d, an ISO time, or epoch seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    return "" if value is None else str(value)


# /v1/usage's group_by values (gateway/costs/usage.py GROUP_COLUMNS; not imported: pyarrow would
# slow every `thawline` start; tests/unit/test_adapters_gateway.py keeps the two equal)
GROUPS = ("key", "route", "model", "target", "adapter")
EMPTY_USAGE = "no usage recorded yet"
BASE_MODEL = "(base model)"   # by adapter, the group of requests for no adapter (the gateway's null)


def usage_table(rows: list[dict[str, Any]], group_by: str) -> Table:
    """One row per group (the gateway's `group` column, headed by what it groups), the other
    columns as the gateway sent them, numbers right-aligned and totalled in the footer."""
    cols: list[str] = ["group"] if any("group" in r for r in rows) else []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    table = Table(title=f"Cost ledger by {group_by}", show_footer=bool(rows))
    numeric = {c for c in cols if rows and all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows)}
    for i, c in enumerate(cols):
        footer = "total" if i == 0 else (_fmt(sum(r.get(c) or 0 for r in rows)) if c in numeric else "")
        table.add_column(group_by if c == "group" else c, justify="right" if c in numeric else "left",
                         footer=footer)
    for r in sorted(rows, key=lambda r: -float(r.get("cost_usd") or 0)):
        if group_by == "adapter" and r.get("group") is None:
            r = {**r, "group": BASE_MODEL}
        table.add_row(*(_fmt(r.get(c)) for c in cols))
    return table


def status_tables(report: Any) -> list[Table]:
    apps = Table(title="Serve applications")
    for c in ("app", "app status", "deployment", "status", "replicas", "starting", "state", "tier"):
        apps.add_column(c, justify="right" if c in ("replicas", "starting") else "left")
    from gateway.readiness import CACHED, COLD, PARKED, WARM, WARMING

    colors = {WARM: "green", WARMING: "yellow", COLD: "cyan", PARKED: "green", CACHED: "yellow"}
    for r in report.rows:
        apps.add_row(r.app, r.app_status, r.deployment, r.status, str(r.running), str(r.starting),
                     f"[{colors.get(r.state, 'white')}]{r.state}[/]",
                     f"[{colors.get(r.tier, 'white')}]{r.tier}[/]" if r.tier else "")
    caches = Table(title="Snapshots cached on each node")
    for c in ("node", "cache dir", "snapshot", "MB"):
        caches.add_column(c, justify="right" if c == "MB" else "left")
    by_node: dict[str, list[Any]] = {}
    for c in report.caches:
        by_node.setdefault(c.node, []).append(c)
    for node, cache_dir in sorted(report.cache_dirs.items()):
        items = by_node.get(node) or []
        if not items:
            caches.add_row(node, cache_dir, "(none)", "0")
        for item in items:
            caches.add_row(node, cache_dir, item.path, f"{item.bytes / 1e6:.1f}")
    return [apps, caches]


# ---------------------------------------------------------------------------------- commands

def deploy_cmd(
    config: Path = typer.Argument(..., help="Serve config YAML (`applications:` list), e.g. serve_apps/configs/local-cpu.yaml."),
    address: Optional[str] = typer.Option(None, "--address", "-a", help="Ray dashboard address (env RAY_DASHBOARD_ADDRESS; default http://127.0.0.1:8265)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only; deploy nothing."),
) -> None:
    """Validate CONFIG (Serve schema + each app's typed args), then deploy it as `serve deploy` does."""
    from cluster.cli.ops.ray_connect import use_token_auth_if_available

    use_token_auth_if_available()  # before anything imports ray (it reads its auth mode once)
    from cluster.cli.ops.deploy import dashboard_address, deploy, validate_config

    console = _console()
    cfg, checks = validate_config(config)
    for c in checks:
        schema = f"args checked against {c.schema}" if c.schema else "untyped args (not checked)"
        console.print(f"[green]ok[/] {c.name}: {c.import_path} ({schema})")
    if dry_run:
        console.print(f"{config}: valid ({len(checks)} application(s)); --dry-run, nothing deployed")
        return
    addr = dashboard_address(address)
    deploy(cfg, addr)
    console.print(f"deployed {len(checks)} application(s) to {addr}; watch with `thawline status`")


def status_cmd(
    address: Optional[str] = typer.Option(None, "--address", "-a", help="Ray cluster address (env RAY_ADDRESS; default auto)."),
    timeline: Optional[str] = typer.Option(None, "--timeline", metavar="MODEL", help="Draw MODEL's last cold start, phase by phase, as a waterfall (MODEL: its Serve app, or the route it serves)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report (or, with --timeline, the cold start) as JSON."),
) -> None:
    """Serve apps and deployments with replica counts (zero included), cold/warm state, and the snapshots cached on each node."""
    from cluster.cli.ops.ray_connect import use_token_auth_if_available

    use_token_auth_if_available()  # before anything imports ray (it reads its auth mode once)
    from cluster.cli.ops.status import gather

    addr = address or os.environ.get("RAY_ADDRESS")
    if addr and addr.startswith(("http://", "https://")):
        # A driver connection needs the GCS port, which `ray dashboard` does not forward.
        raise CLIError(f"`thawline status` needs a Ray GCS address (host:6379, or auto on a node), not the "
                       f"dashboard URL {addr} (RAY_ADDRESS, for `ray job submit`); for a remote cluster run "
                       f"it on the head: ray exec CLUSTER.resolved.yaml 'thawline status'")
    if timeline is not None:
        from cluster.cli.ops.timeline import fetch, waterfall

        try:
            app_name, cold = fetch(addr, timeline)
        except ConnectionError as exc:
            raise CLIError(f"cannot connect to Ray at {address or 'auto'}: {exc}") from None
        if as_json:
            typer.echo(json.dumps({"app": app_name, **cold}, indent=2, default=str))
        else:
            _console().print(waterfall(app_name, cold))
        return
    try:
        report = gather(addr)
    except ConnectionError as exc:
        raise CLIError(f"cannot connect to Ray at {address or 'auto'}: {exc}") from None
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps(asdict(report), indent=2))
        return
    console = _console()
    for table in status_tables(report):
        console.print(table)
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")


def usage_cmd(
    group_by: str = typer.Option("route", "--group-by", "-g", help=f"Group rows by one of: {', '.join(GROUPS)}."),
    since: Optional[str] = typer.Option(None, "--since", help="Only spend after this: a duration back (30m, 24h, 7d), an ISO time, or epoch seconds."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help=_BASE_URL_HELP),
    admin_key: Optional[str] = typer.Option(None, "--admin-key", envvar=ADMIN_KEY_ENV, help=f"Admin key for /v1/usage (env {ADMIN_KEY_ENV})."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw report as JSON instead of a table."),
) -> None:
    """The gateway's cost ledger as a table: requests, tokens and USD per group."""
    from gateway.client import Client

    if group_by not in GROUPS:
        raise CLIError(f"--group-by {group_by!r}: choose one of {', '.join(GROUPS)}")
    with Client(base_url) as client:
        report = client.usage(group_by=group_by, since=parse_since(since), admin_key=admin_key)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    if not report.data:
        typer.echo(EMPTY_USAGE)
        return
    _console().print(usage_table(report.data, group_by))
    for path in report.quarantined:
        typer.echo(f"warning: unreadable ledger file moved aside, its rows are not counted: {path}", err=True)


def chat_cmd(
    model: str = typer.Argument(..., help="Route alias (model name) on the gateway, e.g. tiny."),
    message: Optional[list[str]] = typer.Option(None, "--message", "-m", help="Send this and exit (repeat for several turns); without it, read lines interactively."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help=_BASE_URL_HELP),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar=API_KEY_ENV, help=f"Gateway key (env {API_KEY_ENV})."),
    max_tokens: int = typer.Option(32, "--max-tokens", help="Tokens per answer."),
    system: Optional[str] = typer.Option(None, "--system", help="Optional system prompt."),
) -> None:
    """Interactive streaming smoke test against MODEL through the gateway (Ctrl-D or /exit to quit)."""
    from cluster.cli.ops.chat_view import stream_turn
    from gateway.client import Client

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = not message
    err = _console(stderr=True)
    # a second client for the progress poller: it runs on its own thread while the first streams
    with Client(base_url, api_key=api_key) as client, Client(base_url, api_key=api_key) as probe:
        turns = iter(message) if message else None
        while True:
            if turns is not None:
                text = next(turns, None)
            else:
                try:
                    text = input("you> ") if sys.stdin.isatty() else sys.stdin.readline()
                except EOFError:
                    text = None
                if text == "":  # readline() at EOF
                    text = None
            if text is None or text.strip() == "/exit":
                break
            if not text.strip():
                continue
            history.append({"role": "user", "content": text.strip()})
            answer = stream_turn(client, probe, model, history, max_tokens=max_tokens, interactive=interactive,
                                 err=err)
            history.append({"role": "assistant", "content": answer})


def register(app: typer.Typer) -> None:
    app.command("deploy")(one_line_errors(deploy_cmd))
    app.command("status")(one_line_errors(status_cmd))
    app.command("usage")(one_line_errors(usage_cmd))
    app.command("chat")(one_line_errors(chat_cmd))
