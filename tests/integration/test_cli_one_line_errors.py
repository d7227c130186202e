"""CLI commands that reach something absent (a bucket it cannot read, a cluster that is not up)
print one `error:` line and exit non-zero, never a traceback. Real subprocesses of `thawline`;
neither starts Ray (`cluster status` asks Ray's launcher about a local-provider cluster)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _thawline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli.main", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def test_snapshot_ls_of_an_unreadable_bucket_is_one_line():
    # A bucket that does not exist on a real S3 API (moto on loopback; its env reaches the child
    # through os.environ). A gs:// bucket on this offline machine gives the same one line, after
    # gcsfs's retries (~50 s), so the test asks S3.
    from testkit.moto_s3 import moto_s3_server

    with moto_s3_server():
        line = _one_error_line(_thawline("snapshot", "ls", "s3://thawline-missing-bucket-7f3a/x"))
    assert "s3://thawline-missing-bucket-7f3a" in line


def test_cluster_status_without_a_cluster_is_one_line():
    line = _one_error_line(_thawline("cluster", "status", "cluster/onprem.yaml"))
    assert "is not running" in line
