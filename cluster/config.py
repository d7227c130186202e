"""Cluster YAML handling that needs no Ray: loading, Terraform-output placeholders, overrides and
Thawline's own scale-to-zero rules. Ray's schema validation lives in cluster/validate.py.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml


class ClusterConfigError(ValueError):
    """A cluster YAML (or its Terraform outputs) is unusable; the message is one line."""


# "${tf:NAME}" or "${tf:NAME[i]}": a value `terraform output -json` of infra/terraform provides.
PLACEHOLDER_RE = re.compile(r"\$\{tf:([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?\}")


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ClusterConfigError(f"cluster config not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(config, dict):
        raise ClusterConfigError(f"{path}: a cluster config must be a YAML mapping")
    return config


def load_tf_outputs(path: str | Path) -> dict[str, Any]:
    """Read `terraform output -json` (or a plain {name: value} JSON object) into {name: value}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterConfigError(f"terraform outputs file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ClusterConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{path}: expected a JSON object of terraform outputs")
    # `terraform output -json` wraps each value as {"sensitive": ..., "type": ..., "value": ...}.
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in raw.items()}


def find_placeholders(node: Any) -> set[str]:
    """Names of every ${tf:NAME} still present anywhere in the config."""
    found: set[str] = set()
    if isinstance(node, dict):
        for value in node.values():
            found |= find_placeholders(value)
    elif isinstance(node, list):
        for value in node:
            found |= find_placeholders(value)
    elif isinstance(node, str):
        found |= {m.group(1) for m in PLACEHOLDER_RE.finditer(node)}
    return found


def render_tf_outputs(config: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `config` with every ${tf:NAME} replaced by the Terraform output.

    A string that is exactly one placeholder takes the output's own type (a list of subnet ids
    stays a list); a placeholder inside a longer string must resolve to a scalar.
    """
    missing = sorted(name for name in find_placeholders(config) if name not in outputs)
    if missing:
        raise ClusterConfigError(f"terraform outputs lack {', '.join(missing)} (run `terraform output -json` in infra/terraform)")

    def lookup(match: re.Match) -> Any:
        name, index = match.group(1), match.group(2)
        value = outputs[name]
        if index is not None:
            if not isinstance(value, list) or int(index) >= len(value):
                raise ClusterConfigError(f"terraform output {name} has no element [{index}]")
            value = value[int(index)]
        return value

    def render(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: render(v) for k, v in node.items()}
        if isinstance(node, list):
            return [render(v) for v in node]
        if isinstance(node, str):
            whole = PLACEHOLDER_RE.fullmatch(node)
            if whole:
                return copy.deepcopy(lookup(whole))

            def scalar(match: re.Match) -> str:
                value = lookup(match)
                if isinstance(value, (list, dict)):
                    raise ClusterConfigError(f"terraform output {match.group(1)} is a list/map; it cannot be embedded in {node!r}")
                return str(value)

            return PLACEHOLDER_RE.sub(scalar, node)
        return node

    return render(config)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overrides` applied: mappings merge key by key, anything else
    (lists included) is replaced whole, so an override never half-keeps a command list."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def scale_to_zero_problems(config: dict[str, Any]) -> list[str]:
    """Thawline's rules on top of Ray's schema: idle workers must be able to go away.

    Every worker node type (and, for the local provider, the global min_workers) must be at
    min_workers 0, and idle_timeout_minutes must be set explicitly and positive.
    """
    problems: list[str] = []
    idle = config.get("idle_timeout_minutes")
    if idle is None:
        problems.append("idle_timeout_minutes is not set (idle worker nodes would linger for Ray's default)")
    elif not isinstance(idle, (int, float)) or idle <= 0:
        problems.append(f"idle_timeout_minutes must be a positive number, got {idle!r}")
    head = config.get("head_node_type")
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        if node_type.get("min_workers", 0) != 0:
            problems.append(f"worker type {name} has min_workers {node_type['min_workers']}; it must be 0 to scale to zero")
    if config.get("provider", {}).get("type") == "local" and config.get("min_workers", None) not in (0,):
        # The local provider defaults min_workers to len(worker_ips): every machine kept busy.
        problems.append("local provider: set min_workers: 0 (Ray's default keeps every worker IP up)")
    return problems
