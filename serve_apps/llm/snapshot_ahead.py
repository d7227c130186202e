"""An app's snapshot_url resolved ahead of any request, so a cold replica does not.

Resolving costs a cold replica about 0.5 s: its process is new, so its first store access pays
for the S3 client's import and session, then a LIST (`latest`) and reads of snapshot.json and the
engine state. The app's router is always on: it resolves every RESOLVE_EVERY_S and puts the
result on the ReadinessBoard. A starting replica reads it (one actor call) and does only the
identity check against its own node's engine (`first_boot.checked_snapshot`), on the recorded
vLLM version and accelerator. A record older than MAX_AGE_S (the router is stuck, or gone) is
not used; the replica resolves itself, as it does for first-boot apps (their committed id
depends on the node's own engine identity).

Record shape: {"snapshot_url": as configured, "url": the committed snapshot it resolved to,
"vllm_version": str, "accelerator": AcceleratorInfo as a dict or None, "at": time.time()}.
"""
from __future__ import annotations

import time

from serve_apps.llm.args import LLMAppArgs
from serve_apps.llm.first_boot import EngineIdentity, checked_snapshot, recorded_engine
from serve_apps.llm.periodic import Periodic

RESOLVE_EVERY_S = 10.0
MAX_AGE_S = 30.0  # three missed refreshes


def resolve(snapshot_url: str) -> dict:
    url, version, accelerator = recorded_engine(snapshot_url)
    return {"snapshot_url": snapshot_url, "url": url, "vllm_version": version,
            "accelerator": accelerator.model_dump() if accelerator is not None else None, "at": time.time()}


def use_resolved(args: LLMAppArgs, identity: EngineIdentity, record: dict | None, now: float | None = None) -> str | None:
    """The URL to restore from the router's record, after the identity check (raises
    first_boot.EngineMismatchRefused); None when there is no usable record."""
    from snapshots.vllm_engine.engine_state import AcceleratorInfo

    now = time.time() if now is None else now
    if not record or not args.snapshot_url or record.get("snapshot_url") != args.snapshot_url:
        return None
    if not 0 <= now - record.get("at", 0) <= MAX_AGE_S:
        return None
    acc = record.get("accelerator")
    return checked_snapshot(args, identity, record["url"], record["vllm_version"],
                            AcceleratorInfo.model_validate(acc) if acc is not None else None)


class SnapshotAhead(Periodic):
    """The router's resolver thread: resolve now, then every RESOLVE_EVERY_S, onto the board."""

    name, every_s = "thawline-snapshot-ahead", RESOLVE_EVERY_S

    def __init__(self, app_name: str, snapshot_url: str, board) -> None:
        self.app_name, self.snapshot_url, self.board = app_name, snapshot_url, board
        super().__init__()

    def tick(self) -> None:
        self.board.note_resolved_snapshot.remote(self.app_name, resolve(self.snapshot_url))

    def failed(self, error: Exception) -> str:  # a store hiccup: replicas resolve it themselves meanwhile
        return f"resolving {self.snapshot_url} ahead failed (replicas resolve it themselves): {error}"
