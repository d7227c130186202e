"""`thawline adapter push|ls|rm|gc`: LoRA adapters in the snapshot store, next to their base model.

An adapter is stored under the base model's name (`<store>/<model>/adapters/<name>/`,
snapshots/adapters/) and checked at push against that model's latest snapshot. Results go to
stdout, the upload's progress bar and errors to stderr.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Optional

import typer

from cluster.cli.errors import CLIError, one_line_errors
from cluster.cli.snapshot.commands import _human
from cluster.cli.snapshot.helpers import confirm_delete, require_store, run_gc

app = typer.Typer(
    help="Push, list and remove LoRA adapters in the snapshot store, stored next to (and checked against) "
         "their base model's snapshots.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_STORE_HELP = "Snapshot store URL: file://..., s3://bucket/prefix, gs://..., memory://... (the base model's store)."
_BASE_HELP = "Base model: its name in the store, where a committed snapshot of it must exist."


class _LazyBar:
    """progress(n) that draws the byte bar from the first byte on, so a push refused before its
    upload prints its one error line and no bar."""

    def __init__(self, stack: contextlib.ExitStack, description: str, total: int):
        self._stack, self._description, self._total = stack, description, total
        self._bar = None

    def __call__(self, nbytes: int) -> None:
        if self._bar is None:
            from snapshots.progress import byte_bar

            self._bar = self._stack.enter_context(byte_bar(self._description, total=self._total))
        self._bar(nbytes)


def _open(store: str):
    from snapshots.adapters import AdapterStore

    return AdapterStore(store)


@app.command()
@one_line_errors
def push(
    src: Path = typer.Argument(..., metavar="DIR", help="PEFT LoRA adapter dir: adapter_config.json (peft_type LORA) and "
                               "adapter_model.safetensors."),
    base: str = typer.Option(..., "--base", help=_BASE_HELP),
    name: str = typer.Option(..., "--name", help="Adapter name: [A-Za-z0-9._-], no ':' (requests name it "
                             "<route>:<adapter>)."),
    store: str = typer.Option(..., "--store", help=_STORE_HELP),
) -> None:
    """Check a LoRA adapter against its base, upload it, commit it; prints its URL, rank and size.

    The adapter's hidden size (from its tensors' shapes) must be the one of the base's latest
    snapshot. A name that is already committed is refused: remove it first.
    """
    from snapshots.adapters.layout import ADAPTER_FILES

    total = sum((src / f).stat().st_size for f in ADAPTER_FILES if (src / f).is_file())
    with contextlib.ExitStack() as stack:
        info = _open(store).push(src, model=base, name=name, progress=_LazyBar(stack, f"push {name}", total))
    typer.echo(f"pushed {info.url} (rank {info.base.rank}, {_human(info.nbytes)})")


@app.command("ls")
@one_line_errors
def ls_(
    store: str = typer.Option(..., "--store", help=_STORE_HELP),
    base: Optional[str] = typer.Option(None, "--base", help="Only this base model's adapters (default: every model's)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list (one object per adapter) instead of a table."),
) -> None:
    """List committed adapters: model, name, rank, target modules, size, creation time.

    A push that died is never shown. A store that does not exist is an error (exit 1); an
    existing store without adapters prints "no adapters" (exit 0).
    """
    st = _open(store)
    try:
        require_store(st)
        infos = st.list(base)
    except (CLIError, ValueError):
        raise
    except Exception as e:      # unreachable host, no credentials, denied: one line naming the store
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(f"cannot read store {store}: {msg}") from None
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    if not infos:
        typer.echo(f"no adapters{f' of {base}' if base else ''} in {store}", err=True)
        return
    rows = [(i.model, i.name, str(i.base.rank), ",".join(i.base.target_modules), _human(i.nbytes),
             time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(i.created_at))) for i in infos]
    head = ("MODEL", "NAME", "RANK", "TARGET MODULES", "SIZE", "CREATED (UTC)")
    w = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    for r in [head, *rows]:
        typer.echo(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:<{w[3]}}  {r[4]:>{w[4]}}  {r[5]}")


@app.command("rm")
@one_line_errors
def rm_(
    name: str = typer.Argument(..., help="Adapter name."),
    base: str = typer.Option(..., "--base", help="Base model the adapter was pushed for."),
    store: str = typer.Option(..., "--store", help=_STORE_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove an adapter; asks first unless --yes.

    It is unlisted at once (adapter.json goes first), then its files go. A missing adapter is an
    error (exit 1).
    """
    st = _open(store)
    info = st.get(base, name)  # a missing adapter is an error before any question
    confirm_delete([info.url], yes=yes, noun="adapter(s)")
    st.rm(base, name)
    typer.echo(f"removed {info.url}")


@app.command()
@one_line_errors
def gc(
    store: str = typer.Option(..., "--store", help=_STORE_HELP),
    older_than: float = typer.Option(3600.0, "--older-than", min=0, help="Only remove push dirs whose newest file "
                                     "is older than this many seconds (a push writes its files within seconds)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be removed."),
) -> None:
    """Remove the files of pushes that died before committing; asks first unless --yes.

    Only push dirs that no adapter.json names and that hold nothing but a push's own files are
    touched; committed adapters never are.
    """
    st = _open(store)
    require_store(st)
    run_gc(st, older_than=older_than, yes=yes, dry_run=dry_run, label="adapter gc", what="dead push(es)",
           noun="dead push dir(s)")
