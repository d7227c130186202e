"""`thawline model tiny|bench OUT`: generate a local Llama test checkpoint (nothing from a hub)."""
from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli.errors import one_line_errors

app = typer.Typer(help="Generate deterministic Llama checkpoints for tests and benchmarks.", no_args_is_help=True)


def _report(path: Path) -> None:
    files = sorted(f for f in path.iterdir() if f.is_file())
    total = sum(f.stat().st_size for f in files)
    typer.echo(f"wrote {path} ({len(files)} files, {total / 1e6:.1f} MB)")


@app.command()
@one_line_errors
def tiny(
    out: Path = typer.Argument(..., help="Output directory (created)."),
    seed: int = typer.Option(0, help="Seed; the same seed gives byte-identical files."),
) -> None:
    """A ~2 MB float32 Llama whose dims all shard at TP=2 (e2e tests, demo)."""
    from cluster.models.tinyllama import generate_llama

    _report(generate_llama(out, preset="tiny", seed=seed))


@app.command()
@one_line_errors
def bench(
    out: Path = typer.Argument(..., help="Output directory (created)."),
    size_gb: float = typer.Option(1.5, "--size-gb", help="Approximate checkpoint size in GB (rounded up to whole layers)."),
    seed: int = typer.Option(0, help="Seed; the same seed gives byte-identical files."),
) -> None:
    """A bfloat16 Llama of about SIZE_GB, in several safetensors shards (benchmarks)."""
    from cluster.models.tinyllama import generate_llama

    _report(generate_llama(out, preset="bench", size_gb=size_gb, seed=seed))
