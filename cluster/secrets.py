"""The nodes' secrets: one AWS Secrets Manager secret, rendered into an env file at node start.

The secret (infra/terraform/secrets.tf) holds a JSON object of environment variable -> value: the
gateway's admin key (THAWLINE_ADMIN_KEY), Ray's cluster token (RAY_AUTH_TOKEN), hosted providers'
keys (whatever `api_key_env` names in gateway.yaml). Every node renders it once, in
cluster/aws-gpu.yaml's setup_commands (`thawline cluster render-env`), to a mode-600 file of
`export NAME='value'` lines that the `ray start` command sources: Ray's processes inherit it, so
the gateway replicas read the keys from their environment, and neither YAML, nor a runtime_env
(which Ray logs), nor the Terraform state ever holds them.

Values are never printed, logged or put in an exception message; only variable names are.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SecretEnvError(ValueError):
    """The secret cannot be read or is not a JSON object of env var -> string (never shows values)."""


def parse_secret_env(secret_string: str, *, source: str = "secret") -> dict[str, str]:
    """The env var -> value mapping of a secret string; a malformed one is named, its values are not."""
    try:
        doc = json.loads(secret_string)
    except ValueError:
        raise SecretEnvError(f"{source}: not JSON (expected an object of env var -> value)") from None
    if not isinstance(doc, dict) or not doc:
        raise SecretEnvError(f"{source}: expected a non-empty JSON object of env var -> value")
    env: dict[str, str] = {}
    for name, value in doc.items():
        if not _ENV_NAME.fullmatch(name):
            raise SecretEnvError(f"{source}: {name!r} is not an environment variable name")
        if not isinstance(value, str) or "\0" in value:
            raise SecretEnvError(f"{source}: the value of {name} must be a string without NUL bytes")
        env[name] = value
    return env


def missing_names(env: dict[str, str], required: list[str]) -> list[str]:
    return [name for name in required if not env.get(name)]


def fetch_secret_env(secret_id: str, *, region: str | None = None, client: Any = None) -> dict[str, str]:
    """Read `secret_id` from Secrets Manager (the node's instance profile grants exactly this)."""
    if client is None:
        import boto3

        client = boto3.client("secretsmanager", region_name=region)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = client.get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "ClientError")
        raise SecretEnvError(f"cannot read secret {secret_id}: {code}") from None
    except BotoCoreError as exc:
        raise SecretEnvError(f"cannot read secret {secret_id}: {type(exc).__name__}") from None
    if "SecretString" not in answer:
        raise SecretEnvError(f"secret {secret_id} has no string value (put a JSON object)")
    return parse_secret_env(answer["SecretString"], source=f"secret {secret_id}")


def env_file_text(env: dict[str, str], *, source: str) -> str:
    """`export NAME='value'` lines, shell-quoted, for `. FILE` (or `set -a; . FILE`)."""
    lines = [f"# Written by `thawline cluster render-env` from {source}. Secret: mode 600, never commit."]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    return "\n".join(lines) + "\n"


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 600 from the first byte, replacing it atomically."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
