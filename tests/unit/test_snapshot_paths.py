"""Untrusted input in snapshot.json / URLs / names (issue 11: defects 1, 6, 7), pure checks only."""
from __future__ import annotations

import json

import pytest

from snapshots import fsutil
from snapshots.errors import UnsafeSnapshotPath, UnsupportedFormatVersion, UnsupportedStore
from snapshots.format import ALIGN, FORMAT_VERSION, EngineInfo, PartInfo, RankInfo, SnapshotMeta, check_name, parse_meta, part_path
from snapshots.paths import safe_relpath
from snapshots.store import split_snapshot_url

WHERE = "s3://b/store/m/s/snapshot.json"


def _meta_json(files=(), part="rank-0/part-0.bin") -> bytes:
    m = SnapshotMeta(
        format_version=FORMAT_VERSION, model="m", snapshot_id="s", created_at=1.0, tp_size=1,
        engine=EngineInfo(name="none"), checksum_algorithm="xxh3_64", align=ALIGN,
        ranks=[RankInfo(rank=0, parts=[PartInfo(path=part, nbytes=10)], nbytes=10, tensor_bytes=10, num_tensors=1)],
        total_bytes=10, files=list(files),
    )
    return m.model_dump_json().encode()


@pytest.mark.parametrize("ok", ["engine/hf/config.json", "rank-0/part-0.bin", "a", "a.b/c-d_e"])
def test_safe_relpath_accepts_plain_relative_paths(ok):
    assert safe_relpath(ok, where=WHERE) == ok


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "engine/../../x", "a/../b", "./a", "a//b", "a/", "",
                                 "a\\..\\b", "a\x00b", "a\nb", "..", "."])
def test_safe_relpath_rejects_escapes_naming_path_and_file(bad):
    with pytest.raises(UnsafeSnapshotPath) as exc:
        safe_relpath(bad, where=WHERE)
    assert WHERE in str(exc.value) and repr(bad) in str(exc.value)


@pytest.mark.parametrize("files,part", [
    (["/tmp/pwned"], "rank-0/part-0.bin"),
    (["engine/../../../pwned"], "rank-0/part-0.bin"),
    ([], "../rank-0/part-0.bin"),
    ([], "/var/tmp/part-0.bin"),
    ([], "rank-1/part-0.bin"),  # another rank's dir
    ([".thawline-cache/rank-0.done"], "rank-0/part-0.bin"),  # the node cache's own markers
])
def test_parse_meta_rejects_unsafe_paths(files, part):
    with pytest.raises(UnsafeSnapshotPath, match="s3://b/store/m/s/snapshot.json"):
        parse_meta(_meta_json(files, part), where=WHERE)


def test_parse_meta_accepts_a_normal_snapshot():
    assert parse_meta(_meta_json(["engine/hf/config.json"], part_path(0, 0)), where=WHERE).files == ["engine/hf/config.json"]


def test_unknown_format_version_names_the_file():
    raw = json.dumps({"format_version": 7})
    with pytest.raises(UnsupportedFormatVersion, match=r"^s3://b/store/m/s/snapshot.json: unsupported snapshot format version 7"):
        parse_meta(raw, where=WHERE)


@pytest.mark.parametrize("bad", ["m\n", "m\r\n", "latest\n", "\nm"])
def test_names_with_a_trailing_newline_are_rejected(bad):
    with pytest.raises(ValueError, match="invalid"):
        check_name("snapshot id", bad)
    with pytest.raises(ValueError, match="invalid"):
        check_name("model name", bad)


def test_snapshot_urls_with_newline_names_are_rejected():
    with pytest.raises(ValueError, match="invalid model name"):
        split_snapshot_url("file:///store/m\n/abc")
    with pytest.raises(ValueError, match="invalid snapshot id"):
        split_snapshot_url("file:///store/m/abc\n")


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/store", "https://example.com/s", "ftp://h/s",
                                 "simplecache::s3://b/s", "HTTP://h/s"])
def test_non_store_schemes_are_refused(url, monkeypatch):
    monkeypatch.delenv(fsutil.ALLOW_ANY_SCHEME_ENV, raising=False)
    with pytest.raises(UnsupportedStore, match="is not a snapshot store"):
        fsutil.url_to_fs(url)


@pytest.mark.parametrize("url", ["file:///tmp/x", "/tmp/x", "memory://x", "s3://b/x", "gs://b/x", "gcs://b/x"])
def test_store_schemes_are_accepted(url):
    assert fsutil.check_scheme(url) in fsutil.STORE_SCHEMES


def test_any_scheme_when_explicitly_allowed(monkeypatch):
    monkeypatch.delenv(fsutil.ALLOW_ANY_SCHEME_ENV, raising=False)
    assert fsutil.check_scheme("http://h/s", allow_any_scheme=True) == "http"
    monkeypatch.setenv(fsutil.ALLOW_ANY_SCHEME_ENV, "1")
    assert fsutil.check_scheme("http://h/s") == "http"
