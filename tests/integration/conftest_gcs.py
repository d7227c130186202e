"""A real GCS JSON-API server on loopback (gcp-storage-emulator) for the gs:// store tests.

Tests import the fixture: `from tests.integration.conftest_gcs import gcs_emulator`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest

from tests.conftest import free_port, wait_for_port

# gcsfs >= 2026 makes gcsfs.GCSFileSystem its ExtendedGcsFileSystem, which first asks the gRPC
# Storage Control API for every bucket's layout (zonal / hierarchical). The emulator speaks only
# the JSON API, so each lookup would hang ~60 s before falling back to the JSON-API class anyway.
# The flag is read when gcsfs is imported, so it is set at this module's import (before gcsfs).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

BUCKET = "thawline-test"
PROJECT = "thawline-test"


@dataclass(frozen=True)
class GcsEmulator:
    url: str  # gs://<bucket>/<session prefix>; tests put their stores below it
    storage_options: dict  # what gcsfs needs explicitly (also installed as fsspec's gs defaults)
    endpoint: str
    request_log: Path  # one line per HTTP request the emulator served, query string included


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """gcp-storage-emulator in a subprocess on 127.0.0.1 with one bucket; sets the env gcsfs needs.

    storage_options are also set as fsspec's config defaults for gs:// (and as FSSPEC_GS_* env for
    subprocesses), so URL-only code paths (helpers shared with the S3 tests, restore) reach the
    emulator anonymously, as the moto fixture does for s3:// through AWS_* env.
    """
    port = free_port()
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "requests.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "-H", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    # token="anon": without it gcsfs tries google_default, gcloud's cache, then the GCE metadata
    # server before falling back to anonymous.
    storage_options = {"token": "anon", "project": PROJECT}
    env = {"STORAGE_EMULATOR_HOST": endpoint, "FSSPEC_GS_TOKEN": "anon", "FSSPEC_GS_PROJECT": PROJECT}
    old_env = {k: os.environ.get(k) for k in env}
    old_conf = fsspec.config.conf.get("gs")
    try:
        wait_for_port("127.0.0.1", port, timeout_s=30)
        os.environ.update(env)
        fsspec.config.conf["gs"] = {**(old_conf or {}), **storage_options}
        import gcsfs
        import gcsfs.core

        assert gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem, (
            "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set; import "
            "tests.integration.conftest_gcs first"
        )
        gcsfs.GCSFileSystem(skip_instance_cache=True, **storage_options).mkdir(BUCKET)
        yield GcsEmulator(f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}", storage_options, endpoint, log_path)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if old_conf is None:
            fsspec.config.conf.pop("gs", None)
        else:
            fsspec.config.conf["gs"] = old_conf
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
