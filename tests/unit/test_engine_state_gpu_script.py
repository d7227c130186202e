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
    # The embedded Python must parse too (bash -n does not look inside the heredoc).
    body = text.split("<<'PY'\n", 1)[1].rsplit("\nPY\n", 1)[0]
    compile(body, "gpu_check.sh:python", "exec")
    assert "set -euo pipefail" in text and "timeout 280" in text
