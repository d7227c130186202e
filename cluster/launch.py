"""Resolve a cluster YAML (Terraform outputs filled in, validated) and hand it to Ray's cluster
launcher. The CLI in cluster/cli/cluster_cmd.py is a thin layer over this."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from cluster.config import (
    ClusterConfigError,
    find_placeholders,
    load_cluster_config,
    load_tf_outputs,
    render_tf_outputs,
)


def resolve_config(
    path: str | Path, tf_outputs: str | Path | None = None, *, allow_placeholders: bool = False
) -> dict[str, Any]:
    """Load, fill in ${tf:...} from `terraform output -json`, and validate (Ray + Thawline).

    allow_placeholders: validate a config whose ${tf:...} are still unfilled (they are plain
    strings to Ray's schema); anything that launches must resolve them first.
    """
    from cluster.validate import validate_cluster_config

    config = load_cluster_config(path)
    if tf_outputs is not None:
        config = render_tf_outputs(config, load_tf_outputs(tf_outputs))
    left = sorted(find_placeholders(config))
    if left and not allow_placeholders:
        raise ClusterConfigError(
            f"{path} needs terraform outputs ({', '.join(left)}): pass --tf-outputs FILE from `terraform output -json`"
        )
    validate_cluster_config(config)
    return config


@contextmanager
def resolved_file(config: dict[str, Any]) -> Iterator[Path]:
    """The resolved config as a temporary YAML file for `ray up|down|exec`, removed afterwards."""
    fd, name = tempfile.mkstemp(prefix=f"thawline-{config.get('cluster_name', 'cluster')}-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        yield Path(name)
    finally:
        os.unlink(name)


def ray_executable() -> str:
    """The `ray` next to this interpreter (the project venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if not found:
        raise ClusterConfigError("the `ray` CLI was not found; install thawline's dependencies (ray[default])")
    return found


def run_ray(args: list[str], timeout_s: float | None = None) -> int:
    """Run `ray <args>` with our stdio (Ray's progress output is the user's feedback)."""
    try:
        return subprocess.run([ray_executable(), *args], timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        raise ClusterConfigError(f"`ray {args[0]}` did not finish within {timeout_s:.0f} s") from None
