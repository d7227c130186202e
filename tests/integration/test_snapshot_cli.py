"""`thawline snapshot ...` through typer's CliRunner, against file:// and S3 (moto)."""
from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from cluster.cli.main import app
from snapshots import fsutil
from snapshots.store import SnapshotStore
from cluster.models.tinyllama import generate_llama

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate_llama(tmp_path_factory.mktemp("tiny"), preset="tiny")


@pytest.fixture(params=["file", "s3"])
def store_url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path}/store"
    return f"{request.getfixturevalue('s3_bucket_url')}/{uuid.uuid4().hex[:8]}"


def cli(*args: str, ok: bool = True):
    result = runner.invoke(app, ["snapshot", *args])
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def error_line(result) -> str:
    """The CLI's contract: exit 1 and exactly one `error: ...` line on stderr."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_every_verb(store_url, tiny_dir, tmp_path):
    created = cli("create", str(tiny_dir), "--tp", "2", "--store", store_url, "--name", "tiny", "--engine", "none",
                  "--part-size-mb", "1")
    url = created.stdout.strip().splitlines()[-1]
    sid = url.rsplit("/", 1)[1]
    assert url == f"{store_url}/tiny/{sid}"

    listed = cli("ls", store_url)
    assert f"tiny/{sid}" in listed.stdout and " 2 " in listed.stdout

    meta = json.loads(cli("inspect", f"{store_url}/tiny/latest").stdout)
    assert (meta["snapshot_id"], meta["tp_size"], meta["format_version"], meta["url"]) == (sid, 2, 1, url)

    verified = cli("verify", url)
    assert verified.stdout.startswith(f"ok {url}: 2 ranks, ")

    restored = cli("restore", f"{store_url}/tiny/latest", "--rank", "1", "--cache-dir", str(tmp_path / "cache"))
    assert restored.stdout.startswith(f"rank 1 of {url}: ") and "GB/s" in restored.stdout

    fetched = cli("fetch", url, "--rank", "0", "--cache-dir", str(tmp_path / "cache2"))
    local = fetched.stdout.strip().splitlines()[-1]
    if store_url.startswith("s3://"):
        assert local.startswith(str(tmp_path / "cache2")) and "fetched" in fetched.stderr
    else:
        assert local == fsutil.url_to_fs(url)[1] and "read in place" in fetched.stderr

    removed = cli("rm", url, "--yes")
    assert removed.stdout.strip() == f"removed {url}"
    assert f"tiny/{sid}" not in cli("ls", store_url).stdout
    assert "no committed snapshot" in error_line(cli("inspect", url, ok=False))

    SnapshotStore(store_url).create_writer("tiny", "dangling", tp_size=1)
    assert cli("gc", store_url).stdout == ""  # too young by default
    assert cli("gc", store_url, "--older-than", "0", "--yes").stdout.strip() == f"removed {store_url}/tiny/dangling"


def test_errors_are_one_line(store_url, tiny_dir, tmp_path):
    url = cli("create", str(tiny_dir), "--tp", "2", "--store", store_url, "--name", "tiny", "--engine", "none").stdout.strip().splitlines()[-1]
    assert "rank 2 out of range" in error_line(cli("restore", url, "--rank", "2", "--cache-dir", str(tmp_path / "c"), ok=False))
    assert "not divisible by tp=3" in error_line(cli("create", str(tiny_dir), "--tp", "3", "--store", store_url, "--name", "tiny", "--engine", "none", ok=False))
    assert "not a snapshot URL" in error_line(cli("verify", "tiny", ok=False))
    # corrupt one byte of rank 1: verify names the rank and the tensor
    store = SnapshotStore(store_url)
    ref = store.resolve("tiny/latest")
    row = store.read_manifest(ref, 1)[0]
    path = fsutil.join(ref.path, row.file)
    data = bytearray(store.fs.cat_file(path))
    data[row.offset] ^= 0x01
    store.fs.pipe_file(path, bytes(data))
    assert f"rank 1 tensor {row.name!r}" in error_line(cli("verify", url, ok=False))


def test_engine_defaults_to_vllm_and_is_dispatched_lazily(tiny_dir, tmp_path):
    # Without --engine the vllm path is chosen; its argument check runs before vLLM is imported.
    line = error_line(cli("create", str(tiny_dir), "--store", (tmp_path / "s").as_uri(), "--name", "tiny", "--id", "x", ok=False))
    assert "--engine none only" in line
    help_text = cli("create", "--help").stdout
    assert "--max-model-len" in help_text and "--dtype" in help_text
