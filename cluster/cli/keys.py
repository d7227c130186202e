"""`thawline keys create|ls|rotate|revoke|set`: client keys managed live through the gateway's
admin endpoints (/v1/admin/keys, gateway/admin.py), with the admin key like `thawline usage`.
A key's adapters scope (`--adapters alice-*`) limits which `<route>:<adapter>` models it may use.

The secret of a created or rotated key is printed once; the gateway stores only its SHA-256.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import typer

from cluster.cli.errors import CLIError, one_line_errors
from gateway.names import ADMIN_KEY_ENV, BASE_URL_ENV

app = typer.Typer(help="Create, list, rotate and revoke gateway client keys (admin key required).",
                  no_args_is_help=True)

_BASE = typer.Option(None, "--base-url", help=f"Gateway base URL, as for the openai SDK (env {BASE_URL_ENV}; "
                     "default http://127.0.0.1:8000/v1).")
_ADMIN = typer.Option(None, "--admin-key", envvar=ADMIN_KEY_ENV, help=f"Admin key (env {ADMIN_KEY_ENV}).")
_ADAPTERS_HELP = ("LoRA adapters (`<route>:<adapter>`) the key may use: a name or a `prefix*` such as 'alice-*' "
                  "(repeat, or separate with commas); default every adapter.")
_NO_ADAPTERS_HELP = "The key may use no adapter at all (base models only)."


def adapters_body(adapters: list[str] | None, no_adapters: bool = False,
                  all_adapters: bool = False) -> dict[str, Any]:
    """The key's `adapters` scope for the admin API: {} (unchanged / every adapter on create),
    {"adapters": [...]}, [] with --no-adapters, null with --all-adapters."""
    names = [n.strip() for a in (adapters or []) for n in a.split(",") if n.strip()]
    if sum((bool(names), no_adapters, all_adapters)) > 1:
        raise CLIError("give one of --adapters, --no-adapters, --all-adapters")
    if no_adapters:
        return {"adapters": []}
    if all_adapters:
        return {"adapters": None}
    return {"adapters": names} if names else {}


def admin_url(base_url: str | None, path: str) -> str:
    """`base_url` (…/v1, as for the openai SDK) + an admin path such as `/v1/admin/keys`."""
    base = (base_url or os.environ.get(BASE_URL_ENV) or "http://127.0.0.1:8000/v1").rstrip("/")
    return base.removesuffix("/v1") + path


def limits_body(rpm: int | None, tpm: int | None, max_concurrent: int | None,
                usd_per_day: float | None, usd_per_month: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lim = {k: v for k, v in (("rpm", rpm), ("tpm", tpm), ("max_concurrent", max_concurrent)) if v is not None}
    bud = {k: v for k, v in (("usd_per_day", usd_per_day), ("usd_per_month", usd_per_month)) if v is not None}
    if lim:
        out["limits"] = lim
    if bud:
        out["budget"] = bud
    return out


def _call(method: str, base_url: str | None, admin_key: str | None, path: str, body: dict | None = None) -> dict:
    import httpx
    if not admin_key:
        raise CLIError(f"no admin key: pass --admin-key or set {ADMIN_KEY_ENV}")
    try:
        r = httpx.request(method, admin_url(base_url, path), json=body,
                          headers={"authorization": f"Bearer {admin_key}"}, timeout=30)
    except httpx.HTTPError as e:
        raise CLIError(f"cannot reach the gateway at {admin_url(base_url, '')}: {e}") from None
    try:
        data = r.json()
    except ValueError:
        data = {}
    if r.status_code >= 400:
        msg = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
        raise CLIError(f"gateway answered {r.status_code}: {msg or r.text[:200]}")
    return data


def _key_path(key_id: str, suffix: str = "") -> str:
    """The admin path of one key. The id is checked here, before any URL is built: an HTTP client
    folds '..' segments, so `keys set ../routes/openai` would otherwise PATCH route `openai`."""
    from gateway.key_records import ID_RULE, valid_id
    if not valid_id(key_id):
        shown = key_id if len(key_id) <= 40 else key_id[:40] + "..."
        raise CLIError(f"invalid key id {shown!r}: {ID_RULE}")
    return f"/v1/admin/keys/{key_id}{suffix}"


def _print_secret(out: dict) -> None:
    typer.echo(f"key id: {out['id']}")
    typer.echo(f"secret (shown once, store it now): {out['key']}")


@app.command("create")
@one_line_errors
def create(key_id: Optional[str] = typer.Option(None, "--id", help="Key id (default: generated)."),
           route: Optional[list[str]] = typer.Option(None, "--route", "-r", help="Allowed route alias (repeat; default all)."),
           adapters: Optional[list[str]] = typer.Option(None, "--adapters", "--adapter", help=_ADAPTERS_HELP),
           no_adapters: bool = typer.Option(False, "--no-adapters", help=_NO_ADAPTERS_HELP),
           rpm: Optional[int] = typer.Option(None, "--rpm", min=1, help="Requests per minute for this key."), tpm: Optional[int] = typer.Option(None, "--tpm", min=1, help="Tokens per minute (prompt + max output) for this key."),
           max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1, help="Requests in flight at once."),
           usd_per_day: Optional[float] = typer.Option(None, "--usd-per-day", min=0, help="Daily budget in USD (UTC day)."),
           usd_per_month: Optional[float] = typer.Option(None, "--usd-per-month", min=0, help="Monthly budget in USD (UTC month)."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."), base_url: Optional[str] = _BASE,
           admin_key: Optional[str] = _ADMIN) -> None:
    """Create a client key; its secret is printed once."""
    body: dict[str, Any] = {**limits_body(rpm, tpm, max_concurrent, usd_per_day, usd_per_month),
                            **adapters_body(adapters, no_adapters)}
    if key_id is not None:
        _key_path(key_id)
        body["id"] = key_id
    if route:
        body["routes"] = list(route)
    out = _call("POST", base_url, admin_key, "/v1/admin/keys", body)
    typer.echo(json.dumps(out, indent=2)) if as_json else _print_secret(out)


@app.command("ls")
@one_line_errors
def ls(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."), base_url: Optional[str] = _BASE,
       admin_key: Optional[str] = _ADMIN) -> None:
    """List keys (gateway.yaml's and the admin-managed ones); never secrets."""
    out = _call("GET", base_url, admin_key, "/v1/admin/keys")
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title="Gateway keys")
    for c in ("id", "source", "routes", "adapters", "limits", "budget"):
        t.add_column(c)
    for k in out.get("data", []):
        scope = k.get("adapters")
        t.add_row(k["id"], k.get("source", ""), ",".join(k.get("routes") or ["*"]),
                  "*" if scope is None else (",".join(scope) or "(none)"),
                  json.dumps(k.get("limits")) if k.get("limits") else "", json.dumps(k.get("budget")) if k.get("budget") else "")
    Console(width=200).print(t)


@app.command("rotate")
@one_line_errors
def rotate(key_id: str = typer.Argument(..., help="Key id."), as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
           base_url: Optional[str] = _BASE, admin_key: Optional[str] = _ADMIN) -> None:
    """Give a key a new secret (printed once); the old secret stops working."""
    out = _call("POST", base_url, admin_key, _key_path(key_id, "/rotate"))
    typer.echo(json.dumps(out, indent=2)) if as_json else _print_secret(out)


@app.command("revoke")
@one_line_errors
def revoke(key_id: str = typer.Argument(..., help="Key id."), base_url: Optional[str] = _BASE,
           admin_key: Optional[str] = _ADMIN) -> None:
    """Revoke a key: it stops working on every replica within about a second."""
    _call("DELETE", base_url, admin_key, _key_path(key_id))
    typer.echo(f"revoked {key_id}")


@app.command("set")
@one_line_errors
def set_limits(key_id: str = typer.Argument(..., help="Key id."),
               rpm: Optional[int] = typer.Option(None, "--rpm", min=1, help="Requests per minute for this key."), tpm: Optional[int] = typer.Option(None, "--tpm", min=1, help="Tokens per minute (prompt + max output) for this key."),
               max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1, help="Requests in flight at once."),
               usd_per_day: Optional[float] = typer.Option(None, "--usd-per-day", min=0, help="Daily budget in USD (UTC day)."),
               usd_per_month: Optional[float] = typer.Option(None, "--usd-per-month", min=0, help="Monthly budget in USD (UTC month)."),
               adapters: Optional[list[str]] = typer.Option(None, "--adapters", "--adapter", help=_ADAPTERS_HELP.replace("default every adapter", "replaces the key's scope")),
               no_adapters: bool = typer.Option(False, "--no-adapters", help=_NO_ADAPTERS_HELP),
               all_adapters: bool = typer.Option(False, "--all-adapters", help="The key may use every adapter again."),
               base_url: Optional[str] = _BASE, admin_key: Optional[str] = _ADMIN) -> None:
    """Change a key's limits, budget and adapters scope live."""
    body = {**limits_body(rpm, tpm, max_concurrent, usd_per_day, usd_per_month),
            **adapters_body(adapters, no_adapters, all_adapters)}
    if not body:
        raise CLIError("nothing to change: give --rpm/--tpm/--max-concurrent/--usd-per-day/--usd-per-month/"
                       "--adapters/--no-adapters/--all-adapters")
    out = _call("PATCH", base_url, admin_key, _key_path(key_id), body)
    typer.echo(json.dumps(out))
