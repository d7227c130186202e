"""Pure parts of the CLI habits (issue 16): --engine-arg parsing, the cold-start waterfall,
`ray status` parsing, --version."""
from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cluster.cli.cluster_status import parse_ray_status, summary
from cluster.cli.errors import CLIError
from cluster.cli.main import app
from cluster.cli.ops.timeline import waterfall
from gateway.cold_start_phases import PHASE_ORDER
from cluster.cli.snapshot.helpers import parse_engine_args


def test_version_flag():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("thawline ")


def test_engine_args_parse_json_else_string():
    got = parse_engine_args(["quantization=fp8", "gpu-memory-utilization=0.85", "enforce_eager=true",
                             "max_num_seqs=4", 'hf_overrides={"a": 1}', "tokenizer_mode=auto", "x="])
    assert got == {"quantization": "fp8", "gpu_memory_utilization": 0.85, "enforce_eager": True,
                   "max_num_seqs": 4, "hf_overrides": {"a": 1}, "tokenizer_mode": "auto", "x": ""}
    with pytest.raises(CLIError, match="KEY=VALUE"):
        parse_engine_args(["quantization"])


def test_timeline_phases_are_named_by_what_they_time():
    # the wire names every reader shows (board, traces, /ui, this CLI): the weights load inside
    # the engine's start, so no phase before it may claim the weights
    assert PHASE_ORDER == ("serve_scheduling", "worker_start", "imports", "engine_prepare",
                           "engine_start_with_weights", "first_token")


def test_waterfall_draws_phases_back_to_back():
    cold = {"replica": "r1", "phases_s": {"serve_scheduling": 1.0, "worker_start": 0.5, "imports": 0.0,
                                          "engine_prepare": 0.5, "engine_start_with_weights": 2.0, "first_token": 0.0,
                                          "total": 4.0}}
    console = Console(width=120, record=True, color_system=None)
    console.print(waterfall("tiny-llm", cold, width=40))
    text = console.export_text()
    assert "Last cold start of tiny-llm (replica r1)" in text
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ ") and line.split()[1] in PHASE_ORDER}
    assert list(rows) == list(PHASE_ORDER)
    # engine_start_with_weights starts at 2.00 s (1.0 + 0.5 + 0 + 0.5) and takes half of the 40-column span
    assert "2.00" in rows["engine_start_with_weights"] and rows["engine_start_with_weights"].count("█") == 20
    assert rows["serve_scheduling"].count("█") == 10
    assert "4.00" in text.splitlines()[-2]  # footer: total


RAY_STATUS = """======== Autoscaler status: 2026-11-29 10:00:00 ========
Node status
---------------------------------------------------------------
Active:
 1 head
Idle:
 (no idle nodes)
Pending:
 gpu_a10g, 1 launching
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Total Usage:
 0.0/8.0 CPU
 0B/30.00GiB memory

Total Demands:
 {'GPU': 1.0}: 1+ pending tasks/actors
"""


def test_parse_ray_status_sections():
    out = parse_ray_status(RAY_STATUS)
    assert out["active"] == ["1 head"] and out["idle"] == [] and out["pending"] == ["gpu_a10g, 1 launching"]
    assert out["failures"] == [] and out["usage"] == ["0.0/8.0 CPU", "0B/30.00GiB memory"]
    assert out["demands"] == ["{'GPU': 1.0}: 1+ pending tasks/actors"] and out["ray_status"] == RAY_STATUS


def test_cluster_summary():
    resolved = {"cluster_name": "c", "provider": {"type": "aws"}, "head_node_type": "head", "max_workers": 4,
                "idle_timeout_minutes": 5,
                "available_node_types": {"head": {}, "gpu": {"min_workers": 0, "max_workers": 2}}}
    assert summary("x.yaml", resolved) == {
        "config": "x.yaml", "cluster_name": "c", "provider": "aws", "head_node_type": "head",
        "worker_types": {"gpu": {"min_workers": 0, "max_workers": 2}}, "idle_timeout_minutes": 5}


def test_ray_failure_says_in_one_line_that_the_cluster_is_not_up():
    from cluster.cli.cluster_status import ray_failure

    trace = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
             "RuntimeError: Head node of cluster (thawline-onprem) not found!\n")
    assert ray_failure(1, "", trace, "thawline-onprem") == (
        "cluster thawline-onprem is not running (no head node found); start it with `thawline cluster up CONFIG`")
    other = ray_failure(2, "some output\n", "Traceback (most recent call last):\nValueError: bad key\n", None)
    assert other == "`ray exec` failed with exit code 2: ValueError: bad key"
    assert ray_failure(3, "", "", None) == "`ray exec` failed with exit code 3: no output"
