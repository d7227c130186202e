"""Fixtures shared by every tier.

Environment: nothing may reach a hub or phone home; every server binds to 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

import pytest

from testkit.moto_s3 import make_bucket, moto_s3_server
from testkit.net import free_port, wait_for_port  # noqa: F401  (tests import them from here)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Tests must never touch the user's real cache dir ($HOME): each session gets its own.
os.environ.setdefault("THAWLINE_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"thawline-test-cache-{os.getpid()}"))

REPO_ROOT = Path(__file__).resolve().parent.parent

# tests/run_tiers.sh starts the e2e tier as a background job, which a non-interactive shell starts
# with SIGINT ignored; it stops that tier with SIGINT, so that pytest stops as on Ctrl-C and runs
# its teardowns. Take SIGINT back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def moto_server():
    """A real moto S3 server on loopback; yields its endpoint URL and sets AWS env for s3fs."""
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket_url(moto_server, request):
    """A fresh bucket per test: `s3://<bucket>`."""
    bucket = "thawline-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    return make_bucket(moto_server, bucket)


@contextlib.contextmanager
def fresh_store_url(kind: str, request, tmp_path: Path, prefix: str = "thawline-test"):
    """A fresh, empty store URL of `kind` (file, memory or s3 through the moto fixture), removed
    afterwards where the store outlives the test."""
    if kind == "file":
        yield f"file://{tmp_path}/{prefix}"
    elif kind == "memory":
        import fsspec

        root = f"/{prefix}-{uuid.uuid4().hex[:8]}"
        try:
            yield f"memory://{root}"
        finally:
            fsspec.filesystem("memory").rm(root, recursive=True)
    elif kind == "s3":
        yield f"{request.getfixturevalue('s3_bucket_url')}/{uuid.uuid4().hex[:8]}"
    else:
        raise ValueError(f"unknown store kind {kind!r}")
