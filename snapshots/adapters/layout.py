"""Where adapters live in a store, and the names they may have.

    <store>/<model>/adapters/<name>/adapter.json                       the commit marker, written last
    <store>/<model>/adapters/<name>/<push-id>/adapter_config.json      the PEFT config, as pushed
    <store>/<model>/adapters/<name>/<push-id>/adapter_model.safetensors

Each push writes its files under a fresh push id, so two pushes of one name never write the
same object; the one whose exclusive create of adapter.json succeeds owns the name.
"""
from __future__ import annotations

import re
import secrets
import time

from snapshots.format import ADAPTERS, check_name

ADAPTER_JSON = "adapter.json"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what a push stores, and all a fetch copies
FORMAT_VERSION = 1

_PUSH_ID_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")


def check_adapter_name(name: str) -> str:
    """An adapter name is one path component like a model name, and has no ':' (the gateway
    addresses an adapter as `<route>:<adapter>`)."""
    if isinstance(name, str) and ":" in name:
        raise ValueError(f"invalid adapter name {name!r}: ':' separates a route from its adapter "
                         "(<route>:<adapter>); use [A-Za-z0-9._-]")
    return check_name("adapter name", name)


def new_push_id(now: float | None = None) -> str:
    """Sortable by time (UTC second), unique by 32 random bits."""
    t = time.gmtime(now if now is not None else time.time())
    return time.strftime("%Y%m%dT%H%M%SZ", t) + "-" + secrets.token_hex(4)


def is_push_id(value) -> bool:
    return isinstance(value, str) and _PUSH_ID_RE.fullmatch(value) is not None


def adapters_rel(model: str) -> str:
    """`<model>/adapters`, relative to the store root."""
    return f"{model}/{ADAPTERS}"


def adapter_rel(model: str, name: str) -> str:
    return f"{model}/{ADAPTERS}/{name}"
