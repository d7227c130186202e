"""tests/run_tiers.sh (what `make test` runs): a failing tier is never hidden by the side-by-side
run, and a stopped e2e tier is interrupted the way pytest stops cleanly. PY is a stand-in
interpreter that plays pytest, exiting with the code given for the tier it was asked to run, so
only the script's own control flow is under test."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

FAKE_PYTEST = """#!/usr/bin/env python3
# called as: PY -m pytest -q -ra tests/<tier>; exits with $RC_<TIER>
import os, signal, sys, time
from pathlib import Path

tier = sys.argv[-1].removeprefix("tests/")
tmp = Path(os.environ["TMPDIR"])
print(f"ran {tier}", flush=True)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # as tests/conftest.py does
    signal.signal(signal.SIGINT, signal.default_int_handler)
if tier == "unit":  # the e2e tier, started alongside, is up before the unit tier ends
    while not (tmp / "e2e.pid").exists():
        time.sleep(0.05)
if tier == "e2e":
    (tmp / "e2e.pid").write_text(str(os.getpid()))
    try:  # still running when the other tiers end, unless told to finish at once
        time.sleep(float(os.environ.get("E2E_RUN_S", "1")))
        (tmp / "e2e.done").touch()
    except KeyboardInterrupt:
        (tmp / "e2e.interrupted").touch()  # where pytest runs its teardowns
        sys.exit(2)
sys.exit(int(os.environ.get(f"RC_{tier.upper()}", "0")))
"""


def _run(tmp_path: Path, e2e_run_s: float = 1, **codes: int) -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTEST)
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake), "TMPDIR": str(tmp_path), "E2E_RUN_S": str(e2e_run_s),
           **{f"RC_{k.upper()}": str(v) for k, v in codes.items()}}
    return subprocess.run(["bash", str(REPO_ROOT / "tests" / "run_tiers.sh")], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("codes, named, e2e_run_s", [
    ({}, None, 1),
    ({"e2e": 3}, "e2e (exit 3)", 1),
    ({"e2e": 4}, "e2e (exit 4)", 0),  # the e2e tier ends before the integration tier
    ({"integration": 2}, "integration (exit 2)", 1),
    ({"integration": 1, "e2e": 1}, "integration (exit 1) e2e (exit 1)", 1),
])
def test_every_tier_runs_and_a_failure_in_either_is_the_exit_status(tmp_path, codes, named, e2e_run_s):
    run = _run(tmp_path, e2e_run_s, **codes)
    assert run.stdout.count("ran unit") == 1 and "ran integration" in run.stdout
    # the e2e tier's output is shown after the integration tier's, whatever it exited with
    assert run.stdout.index("ran integration") < run.stdout.index("ran e2e")
    if named is None:
        assert run.returncode == 0, run.stdout + run.stderr
    else:
        assert run.returncode == 1
        assert f"make test: failed tiers: {named}" in run.stderr
    assert not list(tmp_path.glob("thawline-tiers.*")), "the e2e log dir was left behind"


def test_a_failing_unit_tier_interrupts_the_e2e_tier_and_skips_integration(tmp_path):
    run = _run(tmp_path, e2e_run_s=50, unit=1)  # the e2e stand-in would run 50 s (timeout: 60)
    assert run.returncode == 1 and "the unit tier failed (the e2e tier was stopped)" in run.stderr
    assert "ran integration" not in run.stdout
    # it was interrupted (SIGINT: pytest would run its teardowns), neither left running nor waited out
    assert (tmp_path / "e2e.interrupted").exists() and not (tmp_path / "e2e.done").exists()
    pid = int((tmp_path / "e2e.pid").read_text())
    assert not Path(f"/proc/{pid}").exists(), "the e2e tier still runs after the unit tier failed"
    assert not list(tmp_path.glob("thawline-tiers.*")), "the e2e log dir was left behind"
