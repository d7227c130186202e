"""Small pieces of `thawline snapshot` (and `thawline adapter`): engine-arg parsing, store existence,
delete confirmation."""
from __future__ import annotations

import json
import sys

import typer

from cluster.cli.errors import CLIError

# Object stores whose "directories" exist only while they hold objects: an empty prefix in an
# existing bucket is an empty store, not a missing one, so the bucket is what must exist.
_BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs")


def parse_engine_args(pairs: list[str] | None) -> dict:
    """`--engine-arg KEY=VALUE` pairs as engine kwargs. VALUE is parsed as JSON when it is JSON
    (`4`, `0.9`, `true`, `{"a": 1}`), else kept as a string (`awq`, `auto`)."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CLIError(f"--engine-arg {pair!r}: use KEY=VALUE, e.g. quantization=fp8")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def require_store(store) -> None:
    """A store URL that names nothing (a mistyped path or bucket) is an error, so it cannot pass
    for an empty store. memory:// lives in one process and always exists there."""
    fs, root = store.fs, store.root.rstrip("/")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol == "memory":
        return
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(root)
    if fs.exists(root):
        return
    if protocol in _BUCKET_SCHEMES:
        bucket = root.split("/", 1)[0]
        if bucket != root and fs.exists(bucket):
            return
        raise CLIError(f"store not found: {store.url} (bucket {bucket!r} does not exist)")
    raise CLIError(f"store not found: {store.url}")


def confirm_delete(what: list[str], *, yes: bool, noun: str = "snapshot dir(s)") -> None:
    """Ask before deleting, as `kubectl delete`/`ray down` do; --yes skips the question. A
    closed or non-interactive stdin answers no, so a script without --yes deletes nothing."""
    if yes:
        return
    for url in what:
        typer.echo(f"will remove {url}", err=True)
    try:
        ok = typer.confirm(f"Remove {len(what)} {noun}?", default=False, err=True)
    except (typer.Abort, EOFError):
        ok = False
    if not sys.stdin.isatty():
        typer.echo("", err=True)  # piped answers are not echoed: end the prompt's line
    if not ok:
        raise CLIError("nothing removed (pass --yes to skip this question)")


def run_gc(store, *, older_than: float, yes: bool, dry_run: bool, label: str, what: str, noun: str) -> None:
    """A store's gc as the CLI runs it: list what would go, print it on --dry-run, else confirm
    (unless --yes) and collect; `store.gc` re-checks every dir itself (a writer may have moved on
    since the listing). `label` prefixes the summary line, `what` names the removed things."""
    candidates = store.gc(older_than_s=older_than, dry_run=True)
    if dry_run:
        for url in candidates:
            typer.echo(f"would remove {url}")
        typer.echo(f"{label}: {len(candidates)} {what} would be removed (--dry-run)", err=True)
        return
    if candidates:
        confirm_delete(candidates, yes=yes, noun=noun)
    removed = store.gc(older_than_s=older_than) if candidates else []
    for url in removed:
        typer.echo(f"removed {url}")
    typer.echo(f"{label}: {len(removed)} {what} removed", err=True)
