"""`thawline` console script: one typer app, one sub-app (or command) per file.

Each sub-app module imports its heavy dependencies (torch, ray, vllm) lazily inside its
commands, so `thawline --help` stays fast.
"""
from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="thawline",
    help="Self-hosted serverless LLM serving on Ray: snapshots, serve apps, gateway, cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (module, attribute, name) of sub-apps; a module that is missing is skipped so a partial
# checkout still gives a working CLI.
_SUBAPPS = [
    ("cluster.cli.snapshot.commands", "app", "snapshot"),
    ("cluster.cli.adapter", "app", "adapter"),
    ("cluster.cli.model", "app", "model"),
    ("cluster.cli.cluster_cmd", "app", "cluster"),
    ("cluster.cli.bench", "app", "bench"),
    ("cluster.cli.keys", "app", "keys"),
]
# Modules that register top-level commands on `app` themselves.
_COMMAND_MODULES = ["cluster.cli.ops.commands"]

def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("thawline")
        except PackageNotFoundError:  # run from a checkout that was never pip-installed
            v = "unknown (not installed)"
        typer.echo(f"thawline {v}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Self-hosted serverless LLM serving on Ray: snapshots, serve apps, gateway, cluster."""
    from cluster.cli.errors import quiet_library_loggers

    quiet_library_loggers()


def _optional_module(module_name: str):
    """The module, or None when that module itself is absent (a partial checkout)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None


for module_name, attr, name in _SUBAPPS:
    if (module := _optional_module(module_name)) is not None:
        app.add_typer(getattr(module, attr), name=name)

for module_name in _COMMAND_MODULES:
    if (module := _optional_module(module_name)) is not None:
        module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
