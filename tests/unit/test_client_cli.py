"""Operator CLI pure parts: --since parsing, ledger and status tables, cold/warm derivation,
the node cache scan, and bench argument pass-through. No Ray."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from rich.console import Console

from cluster.cli.errors import CLIError
from cluster.cli.ops.commands import parse_since, status_tables, usage_table
from cluster.cli.ops.status import CachedSnapshot, DeploymentRow, StatusReport, derive_state, scan_cache_dir


def _text(table) -> str:
    c = Console(record=True, width=160)
    c.print(table)
    return c.export_text()


def test_parse_since_accepts_durations_iso_and_epoch():
    now = 1_800_000_000.0
    assert parse_since("30m", now) == now - 1800
    assert parse_since("24h", now) == now - 86400
    assert parse_since("1.5d", now) == now - 1.5 * 86400
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("2026-01-02T03:04:05Z", now) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    assert parse_since("2026-01-02", now) == datetime(2026, 1, 2, tzinfo=timezone.utc).timestamp()
    assert parse_since(None, now) is None
    with pytest.raises(CLIError, match="--since 'yesterday'"):
        parse_since("yesterday", now)


def test_usage_table_heads_the_group_column_and_totals_numbers():
    rows = [{"group": "chat", "requests": 2, "tokens_in": 10, "cost_usd": 0.25},
            {"group": "tiny", "requests": 3, "tokens_in": 5, "cost_usd": 0.5}]
    text = _text(usage_table(rows, "route"))
    header = next(line for line in text.splitlines() if "requests" in line)
    assert header.index("route") < header.index("requests") < header.index("cost_usd")
    body = [line for line in text.splitlines() if "chat" in line or "tiny" in line]
    assert "tiny" in body[0]  # most expensive first
    total = next(line for line in text.splitlines() if "total" in line)
    assert "0.75" in total and " 5 " in total and "15" in total


def test_derive_state_prefers_the_readiness_board():
    assert derive_state({}, None) == "cold"
    assert derive_state({"STARTING": 1}, None) == "warming"
    assert derive_state({"RUNNING": 2}, None) == "warm"
    # a replica that is RUNNING to Serve but still restoring its engine is warming, per the board
    assert derive_state({"RUNNING": 1}, {"state": "warming"}) == "warming"
    assert derive_state({}, {"state": "warming"}) == "warming"
    # the board says "cold" for apps it never heard of (e.g. the gateway): Serve's states decide
    assert derive_state({"RUNNING": 1}, {"state": "cold"}) == "warm"
    assert derive_state({}, {"state": "cold"}) == "cold"


def test_scan_cache_dir_finds_committed_snapshots_only(tmp_path):
    snap = tmp_path / "snapshots" / "abc" / "tiny" / "s1"
    (snap / "rank-0").mkdir(parents=True)
    (snap / "rank-0" / "part-0.bin").write_bytes(b"x" * 4096)
    (snap / "snapshot.json").write_text("{}")
    partial = tmp_path / "snapshots" / "abc" / "tiny" / "s2"
    partial.mkdir(parents=True)
    (partial / "manifest.parquet").write_bytes(b"y")
    found = scan_cache_dir(str(tmp_path))
    assert found == [("snapshots/abc/tiny/s1", 4096 + 2)]
    assert scan_cache_dir(str(tmp_path / "missing")) == []


def test_status_tables_show_zero_replicas_and_empty_caches():
    report = StatusReport(serve_running=True, rows=[
        DeploymentRow("llm-tiny", "RUNNING", "LLMServer", "HEALTHY", 0, 0, 0, "cold"),
        DeploymentRow("gateway", "RUNNING", "Gateway", "HEALTHY", 1, 0, 0, "warm")],
        caches=[CachedSnapshot("10.0.0.1", "snapshots/k/tiny/s1", 2_000_000)],
        cache_dirs={"10.0.0.1": "/c", "10.0.0.2": "/c"})
    apps, caches = (_text(t) for t in status_tables(report))
    line = next(line for line in apps.splitlines() if "llm-tiny" in line)
    assert " 0 " in line and "cold" in line
    assert "snapshots/k/tiny/s1" in caches and "2.0" in caches
    assert "(none)" in next(line for line in caches.splitlines() if "10.0.0.2" in line)


def test_bench_passes_arguments_through_and_returns_the_exit_code(tmp_path, monkeypatch):
    from cluster.cli import bench

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "gateway.py").write_text(
        "import sys, pathlib; pathlib.Path(sys.argv[0]).with_name('args.txt').write_text(' '.join(sys.argv[1:])); sys.exit(3)")
    monkeypatch.setattr(bench, "REPO_ROOT", tmp_path)
    assert bench.run_bench("gateway", ["--requests", "10", "--help"]) == 3
    assert (tmp_path / "bench" / "args.txt").read_text() == "--requests 10 --help"
    with pytest.raises(CLIError, match="restore.py is missing"):
        bench.bench_script("restore", tmp_path)


def test_token_auth_is_turned_on_only_when_a_token_exists_and_no_mode_was_chosen(tmp_path):
    from cluster.cli.ops.ray_connect import use_token_auth_if_available

    token = tmp_path / "tok"
    assert not use_token_auth_if_available(env := {"RAY_AUTH_TOKEN_PATH": str(token)})
    assert "RAY_AUTH_MODE" not in env
    token.write_text("t")
    assert use_token_auth_if_available(env) and env["RAY_AUTH_MODE"] == "token"
    chosen = {"RAY_AUTH_TOKEN": "t", "RAY_AUTH_MODE": "disabled"}
    assert not use_token_auth_if_available(chosen) and chosen["RAY_AUTH_MODE"] == "disabled"
