"""`thawline adapter push|ls|rm|gc` through typer's CliRunner on file:// and S3 (moto), and one
real subprocess: one `error:` line and exit 1 for bad input, nothing stored changed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from typer.testing import CliRunner

from cluster.cli.main import app
from cluster.models.tinyllama import generate_llama
from snapshots import fsutil
from snapshots.adapters import AdapterStore
from snapshots.offline import create_offline_snapshot
from tests.conftest import REPO_ROOT
from tests.lora_dirs import make_lora_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate_llama(tmp_path_factory.mktemp("tiny"), preset="tiny")


@pytest.fixture(params=["file", "s3"])
def store_url(request, tmp_path, tiny_dir):
    if request.param == "file":
        url = f"file://{tmp_path}/store"
    else:
        url = f"{request.getfixturevalue('s3_bucket_url')}/{uuid.uuid4().hex[:8]}"
    create_offline_snapshot(tiny_dir, tp=1, store_url=url, name="tiny")
    return url


def cli(*args: str, input: str | None = None, ok: bool = True):
    result = runner.invoke(app, ["adapter", *args], input=input)
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def one_error(result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def _stored(url: str) -> list[str]:
    store = AdapterStore(url)
    path = fsutil.join(store.root, "tiny/adapters")
    try:
        return sorted(store.fs.find(path))
    except FileNotFoundError:
        return []


def test_push_ls_rm(store_url, tmp_path):
    src = make_lora_dir(tmp_path / "alice", rank=4, targets=("q_proj", "v_proj"))
    pushed = cli("push", str(src), "--base", "tiny", "--name", "alice", "--store", store_url)
    line = pushed.stdout.strip()
    assert line.startswith(f"pushed {store_url}/tiny/adapters/alice (rank 4, ") and line.endswith("KiB)"), line
    cli("push", str(make_lora_dir(tmp_path / "bob", rank=8, seed=1)), "--base", "tiny", "--name", "bob",
        "--store", store_url)

    table = cli("ls", "--store", store_url).stdout.splitlines()
    assert table[0].split()[:5] == ["MODEL", "NAME", "RANK", "TARGET", "MODULES"]
    rows = [r.split() for r in table[1:]]
    assert [r[:4] for r in rows] == [["tiny", "alice", "4", "q_proj,v_proj"], ["tiny", "bob", "8", "q_proj,v_proj"]]

    listed = json.loads(cli("ls", "--store", store_url, "--json").stdout)
    assert listed == [i.to_dict() for i in AdapterStore(store_url).list()]
    assert [(i["name"], i["base"]["rank"], i["base"]["hidden_size"], i["base"]["architecture"]) for i in listed] == [
        ("alice", 4, 128, "LlamaForCausalLM"), ("bob", 8, 128, "LlamaForCausalLM")]
    assert json.loads(cli("ls", "--store", store_url, "--base", "other", "--json").stdout) == []
    empty = cli("ls", "--store", store_url, "--base", "other")
    assert empty.stdout == "" and f"no adapters of other in {store_url}" in empty.stderr

    # rm asks: "n" or a closed stdin removes nothing; "y" and --yes remove
    url = f"{store_url}/tiny/adapters/alice"
    declined = cli("rm", "alice", "--base", "tiny", "--store", store_url, input="n\n", ok=False)
    assert "nothing removed (pass --yes" in one_error(declined) and f"will remove {url}" in declined.stderr
    assert "Remove 1 adapter(s)?" in declined.stderr
    assert "nothing removed" in one_error(cli("rm", "alice", "--base", "tiny", "--store", store_url, ok=False))
    assert AdapterStore(store_url).names("tiny") == ["alice", "bob"]
    assert cli("rm", "alice", "--base", "tiny", "--store", store_url, input="y\n").stdout.strip().splitlines()[-1] == \
        f"removed {url}"
    assert cli("rm", "bob", "--base", "tiny", "--store", store_url, "--yes").stdout.strip() == \
        f"removed {store_url}/tiny/adapters/bob"
    assert AdapterStore(store_url).names("tiny") == []
    missing = one_error(cli("rm", "alice", "--base", "tiny", "--store", store_url, "--yes", ok=False))
    assert missing == f"error: no adapter 'alice' of 'tiny' in {store_url}"


def test_bad_input_is_one_line_and_changes_nothing(store_url, tmp_path):
    cli("push", str(make_lora_dir(tmp_path / "alice")), "--base", "tiny", "--name", "alice", "--store", store_url)
    before = _stored(store_url)
    (tmp_path / "empty").mkdir()
    cases = [
        ((str(tmp_path / "nope"), "--name", "x"), "is not a directory"),
        ((str(tmp_path / "empty"), "--name", "x"), "has no adapter_config.json"),
        ((str(make_lora_dir(tmp_path / "ia3", peft_type="IA3")), "--name", "x"), "peft_type 'IA3'; only LORA"),
        ((str(make_lora_dir(tmp_path / "wide", hidden=256)), "--name", "x"),
         "adapter 'x' (hidden 256) does not fit base 'tiny' (LlamaForCausalLM, hidden 128)"),
        ((str(make_lora_dir(tmp_path / "again")), "--name", "alice"), "already exists"),
        ((str(make_lora_dir(tmp_path / "colon")), "--name", "tiny:x"), "':' separates a route"),
    ]
    for args, found in cases:
        result = cli("push", *args, "--base", "tiny", "--store", store_url, ok=False)
        assert found in one_error(result), (args, result.stderr)
        assert "push x" not in result.stderr  # refused before the upload: no progress bar
    no_base = one_error(cli("push", str(make_lora_dir(tmp_path / "b")), "--base", "llama", "--name", "x",
                            "--store", store_url, ok=False))
    assert f"no committed snapshot of base model 'llama' in {store_url}" in no_base
    assert _stored(store_url) == before


def test_ls_of_a_missing_store_is_an_error(tmp_path):
    missing = (tmp_path / "no" / "such").as_uri()
    assert one_error(cli("ls", "--store", missing, ok=False)) == f"error: store not found: {missing}"


def test_gc_lists_then_removes_dead_pushes(store_url, tmp_path):
    cli("push", str(make_lora_dir(tmp_path / "alice")), "--base", "tiny", "--name", "alice", "--store", store_url)
    store = AdapterStore(store_url)
    dead = fsutil.join(store.root, "tiny/adapters/alice/20260101T000000Z-0badf00d/adapter_config.json")
    if fsutil.is_local(store.fs):
        store.fs.makedirs(dead.rsplit("/", 1)[0], exist_ok=True)
    store.fs.pipe_file(dead, b"{}")
    dead_url = f"{store_url}/tiny/adapters/alice/20260101T000000Z-0badf00d"
    assert cli("gc", "--store", store_url, "--older-than", "0", "--dry-run").stdout.strip() == f"would remove {dead_url}"
    assert "nothing removed" in one_error(cli("gc", "--store", store_url, "--older-than", "0", ok=False))
    assert cli("gc", "--store", store_url, "--older-than", "0", "--yes").stdout.strip() == f"removed {dead_url}"
    assert len(_stored(store_url)) == 3 and store.names("tiny") == ["alice"]


def test_a_refused_push_is_one_stderr_line_in_a_real_process(tmp_path):
    store = (tmp_path / "store").as_uri()
    src = make_lora_dir(tmp_path / "a")
    proc = subprocess.run([sys.executable, "-m", "cluster.cli.main", "adapter", "push", str(src), "--base", "tiny",
                           "--name", "alice", "--store", store], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot push adapter 'alice': no committed snapshot of base model 'tiny' in {store} "
        "(make one first: thawline snapshot create)"]


def test_every_verb_has_help():
    for verb in ("push", "ls", "rm", "gc"):
        out = runner.invoke(app, ["adapter", verb, "--help"])
        assert out.exit_code == 0 and "--store" in out.stdout, verb
    assert "adapter" in runner.invoke(app, ["--help"]).stdout
