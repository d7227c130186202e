"""The router's snapshot resolution made ahead of a request (serve_apps/llm/snapshot_ahead.py):
when a starting replica may use it instead of resolving on the cold path, and that it still gets
the same identity check. The readiness board keeps the newest record per app."""
from __future__ import annotations

import pytest

from gateway.readiness import Board
from serve_apps.llm.args import LLMAppArgs
from serve_apps.llm.first_boot import EngineIdentity, EngineMismatchRefused
from serve_apps.llm.snapshot_ahead import MAX_AGE_S, use_resolved
from snapshots.vllm_engine.engine_state import AcceleratorInfo

LATEST = "s3://b/snaps/tiny/latest"
RESOLVED = "s3://b/snaps/tiny/20261207T000000Z-abcdef"
CPU = AcceleratorInfo(kind="cpu")
ARGS = LLMAppArgs(served_model_id="tiny", snapshot_url=LATEST)
HERE = EngineIdentity("0.32.0", {}, CPU)


def _record(at: float = 1000.0, version: str = "0.32.0", accelerator=CPU.model_dump()) -> dict:
    return {"snapshot_url": LATEST, "url": RESOLVED, "vllm_version": version, "accelerator": accelerator, "at": at}


def test_a_fresh_record_gives_the_resolved_snapshot():
    assert use_resolved(ARGS, HERE, _record(), now=1000.0 + MAX_AGE_S) == RESOLVED
    assert use_resolved(ARGS, HERE, _record(accelerator=None), now=1001.0) == RESOLVED


@pytest.mark.parametrize("record, now", [
    (None, 1000.0),
    (_record(), 1000.0 + MAX_AGE_S + 1),  # stale: the router stopped refreshing it
    (_record(at=2000.0), 1000.0),  # from the future (clock skew): not trusted
    ({**_record(), "snapshot_url": "s3://b/snaps/other/latest"}, 1000.0),  # the app's args changed
])
def test_no_usable_record_means_the_replica_resolves(record, now):
    assert use_resolved(ARGS, HERE, record, now=now) is None


def test_first_boot_apps_never_use_one():
    first_boot = LLMAppArgs(served_model_id="tiny", model_source="/m", snapshot_store="s3://b/snaps")
    assert use_resolved(first_boot, HERE, _record(), now=1000.0) is None


def test_the_identity_check_still_applies():
    with pytest.raises(EngineMismatchRefused, match=r"vLLM 0\.31\.0 \(snapshot\) vs vLLM 0\.32\.0"):
        use_resolved(ARGS, HERE, _record(version="0.31.0"), now=1000.0)


def test_the_board_keeps_the_newest_record_per_app():
    board = Board()
    assert board.resolved_snapshot("tiny") is None
    board.note_resolved_snapshot("tiny", _record(at=1.0))
    board.note_resolved_snapshot("tiny", _record(at=2.0))
    assert board.resolved_snapshot("tiny")["at"] == 2.0
    assert board.resolved_snapshot("other") is None
