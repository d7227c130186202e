"""`thawline bench restore|engine-start|cold-start|gateway|adapters|adapters-both-cold [ARGS...]`: run a bench/ script.

Each benchmark is a standalone script (`bench/<name>.py`) that prints a human table and then one
JSON line; the CLI only finds it and runs it in a subprocess with the same interpreter, passing
every extra argument through untouched, so `thawline bench gateway --help` shows the script's
own options and its exit status becomes ours.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from cluster.cli.errors import CLIError, one_line_errors

app = typer.Typer(help="Run a benchmark from bench/ (arguments after the name go to the script).",
                  no_args_is_help=True)

REPO_ROOT = Path(__file__).resolve().parents[2]

# command name -> (script file, one-line description)
BENCHES: dict[str, tuple[str, str]] = {
    "restore": ("restore.py", "Snapshot restore throughput (GB/s) per rank vs a safetensors load."),
    "engine-start": ("engine_start.py", "vLLM engine start from a snapshot vs from the HF checkpoint."),
    "cold-start": ("cold_start.py", "Scale-from-zero to first token (replica, parked, tp2, node scenarios) vs Ray Serve LLM, default and tuned."),
    "gateway": ("gateway.py", "Gateway throughput/latency against a loopback upstream vs a direct call."),
    "adapters": ("adapters.py", "LoRA adapter cold load on a warm base (1,000 stored, Zipf traffic) vs Ray Serve LLM's multiplexed LoRA."),
    "adapters-both-cold": ("adapters_both_cold.py", "What a cold adapter adds to a cold base's first token."),
}

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def bench_script(name: str, root: Path | None = None) -> Path:
    script = (root or REPO_ROOT) / "bench" / BENCHES[name][0]
    if not script.is_file():
        raise CLIError(f"benchmark script {script} is missing (bench/ ships only in a source checkout)")
    return script


def run_bench(name: str, args: list[str]) -> int:
    script = bench_script(name)
    # cwd = repo root so the script's relative paths (.bench/, bench/RESULTS.md) resolve the same
    # way as when it is run by hand; the child inherits stdout/stderr, so tables stream live.
    return subprocess.call([sys.executable, str(script), *args], cwd=str(REPO_ROOT))


def _make_command(name: str, help_text: str):
    @one_line_errors
    def command(ctx: typer.Context) -> None:
        code = run_bench(name, list(ctx.args))
        if code != 0:
            raise typer.Exit(code)

    command.__doc__ = f"{help_text} Runs bench/{BENCHES[name][0]}; extra args pass through (try `--help`)."
    return command


for _name, (_file, _help) in BENCHES.items():
    app.command(_name, context_settings=_PASSTHROUGH, add_help_option=False)(_make_command(_name, _help))
