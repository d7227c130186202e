"""Validate a cluster YAML the way `ray up` / the autoscaler will: Ray's own defaults merge
(`prepare_config`) and its JSON-schema validator (`validate_config`), plus Thawline's
scale-to-zero rules. Ray is imported lazily so `thawline --help` stays fast.
"""
from __future__ import annotations

import copy
import io
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from cluster.config import ClusterConfigError, scale_to_zero_problems

# Providers whose defaults file is missing from the Ray 2.60 wheel (fake_multi_node/example.yaml):
# their configs must spell out every field, and are validated as written.
_NO_DEFAULTS_PROVIDERS = {"fake_multinode"}


def ray_prepare_and_validate(config: dict[str, Any]) -> dict[str, Any]:
    """Return the config as Ray's cluster launcher sees it, or raise ClusterConfigError.

    This is the same path `ray up` takes before it touches a cloud, minus provider calls:
    prepare_config (defaults merge, local-provider node type, per-type worker bounds), then
    validate_config (ray-schema.json plus Ray's cross-field checks).
    """
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    provider_type = (config.get("provider") or {}).get("type")
    if not provider_type:
        raise ClusterConfigError("provider.type is missing")
    try:
        # Ray's local-provider preparation reports problems through its CLI logger (printing to
        # stdout/stderr, then raising); keep the printout out of our one-line error.
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            if provider_type in _NO_DEFAULTS_PROVIDERS:
                prepared = copy.deepcopy(config)
            else:
                prepared = prepare_config(copy.deepcopy(config))
            validate_config(prepared)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "<root>"
        raise ClusterConfigError(f"Ray schema: {where}: {exc.message}") from exc
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ClusterConfigError(f"Ray validation: {exc}") from exc
    except SystemExit as exc:  # click's abort path inside prepare_local
        raise ClusterConfigError(f"Ray validation aborted ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - cli_logger.abort raises a bare click exception
        if type(exc).__module__.startswith("click"):
            raise ClusterConfigError(f"Ray validation: {getattr(exc, 'message', exc)}") from exc
        raise
    return prepared


def validate_cluster_config(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's validation, then Thawline's scale-to-zero rules; returns Ray's prepared config."""
    prepared = ray_prepare_and_validate(config)
    problems = scale_to_zero_problems(config)
    if problems:
        raise ClusterConfigError("; ".join(problems))
    return prepared
