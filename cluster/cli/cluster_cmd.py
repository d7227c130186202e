"""`thawline cluster validate|render|up|down|status CONFIG`: validate first, then call Ray's cluster
launcher on the resolved config. Ray and the validator are imported inside the commands."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cluster.cli.errors import CLIError, one_line_errors

app = typer.Typer(
    help="Launch and manage the Ray cluster (cluster/aws-gpu.yaml, onprem.yaml, ...).",
    no_args_is_help=True,
    add_completion=False,
)

ConfigArg = typer.Argument(..., help="Ray cluster YAML, e.g. cluster/aws-gpu.yaml.", show_default=False)
TfOutputsOpt = typer.Option(
    None, "--tf-outputs", help="`terraform output -json` of infra/terraform; fills in ${tf:NAME} values."
)
TimeoutOpt = typer.Option(1800.0, "--timeout", help="Give up on the Ray command after this many seconds.")


def _resolve(config: Path, tf_outputs: Optional[Path], *, allow_placeholders: bool = False) -> dict:
    from cluster.launch import resolve_config

    return resolve_config(config, tf_outputs, allow_placeholders=allow_placeholders)


def _ray(verb: str, resolved: dict, extra: list[str], timeout: float) -> None:
    from cluster.launch import resolved_file, run_ray

    with resolved_file(resolved) as path:
        # The config path goes before any trailing command argument (`ray exec CONFIG CMD`).
        rc = run_ray([verb, str(path), *extra], timeout_s=timeout)
    if rc != 0:
        raise CLIError(f"`ray {verb}` failed with exit code {rc} (its output is above)")


@app.command()
@one_line_errors
def validate(config: Path = ConfigArg, tf_outputs: Optional[Path] = TfOutputsOpt) -> None:
    """Check CONFIG with Ray's own validator and Thawline's scale-to-zero rules."""
    from cluster.config import find_placeholders

    resolved = _resolve(config, tf_outputs, allow_placeholders=True)
    head = resolved.get("head_node_type")
    types = resolved.get("available_node_types") or {}
    workers = ", ".join(
        f"{name} ({t.get('min_workers', 0)}..{t.get('max_workers', resolved.get('max_workers', '?'))})"
        for name, t in types.items() if name != head
    ) or "none declared (local provider: worker_ips)"
    typer.echo(f"ok: {config} ({resolved['provider']['type']}); workers: {workers}; "
               f"idle_timeout_minutes: {resolved.get('idle_timeout_minutes')}")
    unfilled = sorted(find_placeholders(resolved))
    if unfilled:
        typer.echo(f"note: unfilled terraform outputs ({', '.join(unfilled)}); `up` needs --tf-outputs")


@app.command()
@one_line_errors
def render(
    config: Path = ConfigArg,
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the resolved YAML."),
    tf_outputs: Optional[Path] = TfOutputsOpt,
) -> None:
    """Write CONFIG with Terraform outputs filled in and validated, for plain `ray` commands
    (`ray exec`, `ray attach`, `ray dashboard`)."""
    import yaml

    resolved = _resolve(config, tf_outputs)
    out.write_text(yaml.safe_dump(resolved, sort_keys=False))
    typer.echo(f"wrote {out}")


@app.command()
@one_line_errors
def up(
    config: Path = ConfigArg,
    tf_outputs: Optional[Path] = TfOutputsOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    no_config_cache: bool = typer.Option(False, "--no-config-cache", help="Pass --no-config-cache to ray up."),
    timeout: float = TimeoutOpt,
) -> None:
    """Validate CONFIG, then `ray up` the head node (workers come and go with demand)."""
    resolved = _resolve(config, tf_outputs)
    flags = (["-y"] if yes else []) + (["--no-config-cache"] if no_config_cache else [])
    _ray("up", resolved, flags, timeout)


@app.command()
@one_line_errors
def down(
    config: Path = ConfigArg,
    tf_outputs: Optional[Path] = TfOutputsOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    timeout: float = TimeoutOpt,
) -> None:
    """Validate CONFIG, then `ray down`: stop Ray on every node and release cloud nodes."""
    resolved = _resolve(config, tf_outputs)
    _ray("down", resolved, ["-y"] if yes else [], timeout)


@app.command()
@one_line_errors
def status(
    config: Path = ConfigArg,
    tf_outputs: Optional[Path] = TfOutputsOpt,
    timeout: float = typer.Option(120.0, "--timeout", help="Give up after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the config summary and the parsed `ray status` as JSON."),
) -> None:
    """Validate CONFIG, then show `ray status` (nodes, demand, autoscaler) from the head node."""
    import json
    import subprocess

    from cluster.cli.cluster_status import parse_ray_status, ray_failure, summary
    from cluster.launch import ray_executable, resolved_file

    resolved = _resolve(config, tf_outputs)
    # Captured, not streamed: a cluster that is not up makes `ray exec` print a traceback, and
    # the user should read one line saying so. Ray 2.60 turns token auth on by default;
    # `ray status` only uses the token when told to.
    with resolved_file(resolved) as path:
        try:
            proc = subprocess.run([ray_executable(), "exec", str(path), "RAY_AUTH_MODE=token ray status"],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CLIError(f"`ray exec` did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise CLIError(ray_failure(proc.returncode, proc.stdout, proc.stderr, resolved.get("cluster_name")))
    if not as_json:
        typer.echo(proc.stdout.rstrip("\n"))
        return
    typer.echo(json.dumps({**summary(config, resolved), **parse_ray_status(proc.stdout)}, indent=2))


@app.command("render-env")
@one_line_errors
def render_env(
    secret_id: str = typer.Option(..., "--secret-id", help="Secrets Manager secret (name or ARN; terraform output node_secret_arn): a JSON object of env var -> value."),
    out: Path = typer.Option(..., "--out", "-o", help="The env file to write (mode 600), sourced by the node's `ray start`."),
    region: Optional[str] = typer.Option(None, "--region", help="AWS region of the secret (default: the AWS environment's)."),
    require: list[str] = typer.Option([], "--require", help="Fail unless the secret sets this variable (repeatable)."),
) -> None:
    """Write the nodes' secrets from AWS Secrets Manager to an env file for `ray start` (node start,
    cluster/aws-gpu.yaml). Prints the variable names, never their values."""
    from cluster.secrets import env_file_text, fetch_secret_env, missing_names, write_private_file

    env = fetch_secret_env(secret_id, region=region)
    missing = missing_names(env, require)
    if missing:
        raise CLIError(f"secret {secret_id} does not set {', '.join(missing)}")
    write_private_file(out, env_file_text(env, source=secret_id))
    typer.echo(f"wrote {out}: {', '.join(sorted(env))}")


@app.command()
@one_line_errors
def preload(
    socket_path: Optional[str] = typer.Option(None, "--socket", help="Unix socket of the node zygote (default: $THAWLINE_ZYGOTE_SOCKET, else /tmp/thawline-zygote.sock)."),
    log: Path = typer.Option(Path("~/.thawline/zygote.log"), "--log", help="Where the zygote writes its output."),
    timeout: float = typer.Option(300.0, "--timeout", help="Give up if its imports take longer than this many seconds."),
) -> None:
    """Import torch + vLLM on this node before it joins Ray (run it before `ray start`, as the
    cluster configs' start commands do). Starts the node zygote in the background and returns
    when its imports are done; the node's engine hosts are then forks of it, with nothing left
    to import. Does nothing if one is already running."""
    from serve_apps.llm.zygote import ZygoteStartError, socket_path as default_socket, start_detached

    sock = socket_path or default_socket()
    if not sock:
        raise CLIError("no zygote socket: $THAWLINE_ZYGOTE_SOCKET names {node_id}, which is unknown before `ray start`; pass --socket")
    try:
        status = start_detached(sock, log.expanduser(), timeout_s=timeout)
    except ZygoteStartError as e:
        raise CLIError(str(e)) from None
    how = "already running" if status["already"] else f"imports done in {status['import_s']:.1f} s"
    typer.echo(f"node zygote {how} (pid {status['pid']}, socket {sock})")


if __name__ == "__main__":  # `python -m cluster.cli.cluster_cmd ...`, same as `thawline cluster ...`
    app(prog_name="thawline cluster")
