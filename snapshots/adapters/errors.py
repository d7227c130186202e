"""Adapter errors: one class per failure a caller handles differently, all SnapshotErrors.

Every message is one readable line naming the adapter (and the file or the base when it is about
one), so the CLI and the serving app print it as it is.
"""
from __future__ import annotations

import json

from snapshots.errors import SnapshotError


class AdapterError(SnapshotError):
    """Base of every adapter failure (bad input, a missing base snapshot, ...)."""


class AdapterNotFound(AdapterError):
    """No committed adapter (no adapter.json) of that name for that model."""


class AdapterExists(AdapterError):
    """An adapter of that name is already committed for that model (or another push won the race)."""


class AdapterCorrupt(AdapterError):
    """adapter.json, or a file it names, does not match what was pushed; the message names the
    adapter and the bad file."""


class AdapterBaseMismatch(AdapterError):
    """The adapter does not fit the base model (architecture, hidden size, rank)."""


def json_object(raw, where: str, error: type[AdapterError] = AdapterError) -> dict:
    """`raw` parsed as a JSON object, else `error` naming `where` (not JSON / not an object)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise error(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{where} is not a JSON object")
    return data
