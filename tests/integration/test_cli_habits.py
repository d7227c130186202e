"""CLI habits (issue 16) through typer's CliRunner on real file:// and S3 (moto) stores: a
missing store is an error, an empty one is not; rm/gc ask unless --yes and list with
--dry-run; --json on ls/inspect/verify and `cluster status`; --engine-arg checks."""
from __future__ import annotations

import json
import stat
import uuid

import pytest
from typer.testing import CliRunner

from cluster.cli.main import app
from snapshots.store import SnapshotStore
from cluster.models.tinyllama import generate_llama

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate_llama(tmp_path_factory.mktemp("tiny"), preset="tiny")


def cli(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def one_error(result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_missing_store_is_an_error_empty_store_is_not(tmp_path, s3_bucket_url):
    missing = (tmp_path / "no" / "such").as_uri()
    assert one_error(cli("snapshot", "ls", missing)) == f"error: store not found: {missing}"
    assert one_error(cli("snapshot", "gc", missing)).startswith("error: store not found")
    (tmp_path / "empty").mkdir()
    empty = cli("snapshot", "ls", (tmp_path / "empty").as_uri())
    assert empty.exit_code == 0 and empty.stdout == "" and "no snapshots" in empty.stderr
    assert json.loads(cli("snapshot", "ls", "--json", (tmp_path / "empty").as_uri()).stdout) == []
    # object stores: an empty prefix of an existing bucket is empty; a missing bucket is an error
    assert cli("snapshot", "ls", f"{s3_bucket_url}/{uuid.uuid4().hex[:8]}").exit_code == 0
    assert "does not exist" in one_error(cli("snapshot", "ls", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x"))


def test_json_read_verbs_and_confirmed_deletes(tiny_dir, tmp_path):
    store_url = (tmp_path / "store").as_uri()
    url = cli("snapshot", "create", str(tiny_dir), "--tp", "2", "--store", store_url, "--name", "tiny",
              "--engine", "none").stdout.strip().splitlines()[-1]
    sid = url.rsplit("/", 1)[1]

    listed = json.loads(cli("snapshot", "ls", "--json", store_url).stdout)
    assert [(i["model"], i["snapshot_id"], i["url"], i["tp_size"], i["engine"]) for i in listed] == [
        ("tiny", sid, url, 2, "none")]
    assert listed[0]["total_bytes"] > 0 and listed[0]["error"] is None
    assert json.loads(cli("snapshot", "inspect", "--json", url).stdout)["snapshot_id"] == sid
    verified = json.loads(cli("snapshot", "verify", "--json", url).stdout.strip().splitlines()[-1])
    assert verified["ok"] is True and verified["url"] == url and verified["ranks"] == 2 and verified["bytes"] > 0

    # rm: --dry-run lists, a "no" (or a closed stdin) deletes nothing, --yes deletes
    dry = cli("snapshot", "rm", "--dry-run", url)
    assert dry.exit_code == 0 and dry.stdout.strip() == f"would remove {url}"
    declined = cli("snapshot", "rm", url, input="n\n")
    assert "nothing removed (pass --yes" in one_error(declined) and f"will remove {url}" in declined.stderr
    assert "nothing removed" in one_error(cli("snapshot", "rm", url))  # stdin at EOF: no
    assert len(json.loads(cli("snapshot", "ls", "--json", store_url).stdout)) == 1
    # (CliRunner echoes the typed answer into its stdout; a terminal echoes it itself)
    assert cli("snapshot", "rm", url, input="y\n").stdout.strip().splitlines()[-1] == f"removed {url}"
    assert json.loads(cli("snapshot", "ls", "--json", store_url).stdout) == []
    assert one_error(cli("snapshot", "rm", "--yes", url))  # gone: an error, not a silent no-op

    # gc: same contract
    SnapshotStore(store_url).create_writer("tiny", "dangling", tp_size=1)
    leftover = f"{store_url}/tiny/dangling"
    dry = cli("snapshot", "gc", store_url, "--older-than", "0", "--dry-run")
    assert dry.exit_code == 0 and dry.stdout.strip() == f"would remove {leftover}"
    assert "nothing removed" in one_error(cli("snapshot", "gc", store_url, "--older-than", "0"))
    assert cli("snapshot", "gc", store_url, "--older-than", "0", "--yes").stdout.strip() == f"removed {leftover}"
    assert cli("snapshot", "gc", store_url, "--older-than", "0").exit_code == 0  # nothing left: no question


def test_verify_json_on_a_mismatch(tiny_dir, tmp_path):
    from snapshots import fsutil

    store_url = (tmp_path / "store").as_uri()
    url = cli("snapshot", "create", str(tiny_dir), "--tp", "1", "--store", store_url, "--name", "tiny",
              "--engine", "none").stdout.strip().splitlines()[-1]
    store = SnapshotStore(store_url)
    ref = store.resolve("tiny/latest")
    row = store.read_manifest(ref, 0)[0]
    path = fsutil.join(ref.path, row.file)
    data = bytearray(store.fs.cat_file(path))
    data[row.offset] ^= 0x01
    store.fs.pipe_file(path, bytes(data))
    r = cli("snapshot", "verify", "--json", url)
    assert r.exit_code == 1
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"] is False and out["rank"] == 0 and out["tensor"] == row.name


def test_engine_arg_is_checked_before_any_engine(tiny_dir, tmp_path):
    store = (tmp_path / "s").as_uri()
    base = ["snapshot", "create", str(tiny_dir), "--store", store, "--name", "tiny"]
    assert "KEY=VALUE" in one_error(cli(*base, "--engine-arg", "quantization"))
    assert "use --dtype" in one_error(cli(*base, "--engine-arg", "dtype=float16"))
    assert "apply to --engine vllm only" in one_error(cli(*base, "--engine", "none", "--engine-arg", "quantization=fp8"))
    assert "--engine-arg" in cli("snapshot", "create", "--help").stdout


def test_cluster_status_json(tmp_path, monkeypatch):
    """`ray exec CONFIG 'ray status'` is replaced by a stub `ray` that prints a canned status."""
    from pathlib import Path

    import cluster.launch
    from tests.conftest import REPO_ROOT

    stub = tmp_path / "ray"
    stub.write_text("#!/bin/sh\nprintf 'Node status\\n----\\nActive:\\n 1 node_abc\\nPending:\\n (no pending nodes)\\n'\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(cluster.launch, "ray_executable", lambda: str(stub))
    config = Path(REPO_ROOT) / "cluster" / "fake-multinode.yaml"
    r = cli("cluster", "status", str(config), "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["active"] == ["1 node_abc"] and out["pending"] == [] and out["config"] == str(config)
    assert out["provider"] and isinstance(out["worker_types"], dict) and "Active:" in out["ray_status"]
