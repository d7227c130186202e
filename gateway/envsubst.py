"""`${VAR}` / `${VAR:-default}` in config values a person writes (store URLs, paths). Pure.

Shared by gateway.yaml (ledger and key_store URLs) and the LLM app's args (serve_apps/llm/args.py),
so one Serve config and one gateway.yaml can both put their files under the same
`${THAWLINE_DEMO_DIR:-/tmp/thawline-demo}` without a path baked into the shipped file.
"""
from __future__ import annotations

import os
import re

# `${VAR}` or `${VAR:-default}`; the default may itself be empty.
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, env: dict[str, str] | None = None) -> str:
    """Expand `${VAR}` / `${VAR:-default}` from `env` (default: os.environ).

    A reference to an unset variable without a default is an error: silently expanding to "" would
    turn `${MODELS}/tiny` into `/tiny`, a path that exists nowhere and fails far from the YAML.
    """
    env = os.environ if env is None else env

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ValueError(f"environment variable {name} is not set and {m.group(0)!r} has no ':-default'")

    return _ENV_REF.sub(sub, value)
