"""tests/run_tiers.sh (what `make test` runs): a failing tier is never hidden by the side-by-side
run. PY is a stand-in interpreter that plays pytest, exiting with the code given for the tier
it was asked to run, so only the script's own control flow is under test."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

FAKE_PYTEST = """#!/usr/bin/env bash
# called as: PY -m pytest -q -ra tests/<tier>
tier="${@: -1}"; tier="${tier#tests/}"
echo "ran $tier"
if [ "$tier" = unit ]; then   # the e2e tier, started alongside, is up before the unit tier ends
  until [ -s "$TMPDIR/e2e.pid" ]; do sleep 0.05; done
fi
if [ "$tier" = e2e ]; then   # still running when the other tiers end
  echo $$ > "$TMPDIR/e2e.pid"
  sleep 1
fi
code_var="RC_${tier^^}"
exit "${!code_var:-0}"
"""


def _run(tmp_path: Path, **codes: int) -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTEST)
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake), "TMPDIR": str(tmp_path), **{f"RC_{k.upper()}": str(v) for k, v in codes.items()}}
    return subprocess.run(["bash", str(REPO_ROOT / "tests" / "run_tiers.sh")], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("codes, named", [
    ({}, None),
    ({"e2e": 3}, "e2e (exit 3)"),
    ({"integration": 2}, "integration (exit 2)"),
    ({"integration": 1, "e2e": 1}, "integration (exit 1) e2e (exit 1)"),
])
def test_every_tier_runs_and_a_failure_in_either_is_the_exit_status(tmp_path, codes, named):
    run = _run(tmp_path, **codes)
    assert run.stdout.count("ran unit") == 1 and "ran integration" in run.stdout
    # the e2e tier's output is shown after the integration tier's, whatever it exited with
    assert run.stdout.index("ran integration") < run.stdout.index("ran e2e")
    if named is None:
        assert run.returncode == 0, run.stdout + run.stderr
    else:
        assert run.returncode == 1
        assert f"make test: failed tiers: {named}" in run.stderr
    assert not list(tmp_path.glob("thawline-tiers.*")), "the e2e log dir was left behind"


def test_a_failing_unit_tier_stops_the_e2e_tier_and_skips_integration(tmp_path):
    run = _run(tmp_path, unit=1)
    assert run.returncode == 1 and "the unit tier failed (the e2e tier was stopped)" in run.stderr
    assert "ran integration" not in run.stdout
    # the e2e tier had started (it starts with the unit tier) and is gone by the time the script is
    pid = int((tmp_path / "e2e.pid").read_text())
    assert not Path(f"/proc/{pid}").exists(), "the e2e tier still runs after the unit tier failed"
    assert not list(tmp_path.glob("thawline-tiers.*")), "the e2e log dir was left behind"
