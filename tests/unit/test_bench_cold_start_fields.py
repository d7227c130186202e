"""bench/cold_start.py keeps its JSON field names (RESULTS.md compares runs by them) while the
phases it reads were renamed by what they time."""
from __future__ import annotations

from bench.cold_start import phase_breakdown


def test_the_breakdown_keeps_its_first_field_names():
    run = {"phases_s": {"serve_scheduling": 0.5, "worker_start": 0.0, "imports": 0.03, "engine_prepare": 0.05,
                        "engine_start_with_weights": 2.7, "first_token": 0.2, "total": 3.5},
           "engine_start_detail_s": {"config": 0.03, "engine": 2.6, "serving_state": 0.07}}
    other = {**run, "phases_s": {**run["phases_s"], "engine_start_with_weights": 2.9}}
    out = phase_breakdown([run, other, run])
    assert out == {"engine_init": 2.7, "first_token": 0.2, "imports": 0.03, "restore": 0.05, "serve_scheduling": 0.5,
                   "total": 3.5, "worker_start": 0.0, "engine_init.config": 0.03, "engine_init.engine": 2.6,
                   "engine_init.serving_state": 0.07}
