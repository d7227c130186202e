"""bench/gpu_check.sh is only run on a lent GPU machine; here we make sure it at least parses."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text and "timeout 540" in text and "--dry-run" in text
    # The driver must parse too (the e2e tier runs `bash bench/gpu_check.sh --dry-run` for real:
    # tests/e2e/test_gpu_check_dry_run.py).
    driver = SCRIPT.with_name("gpu_check.py")
    compile(driver.read_text(), str(driver), "exec")
