"""Format v1 rules: alignment, names, snapshot.json version check, checksum."""
from __future__ import annotations

import json

import pytest

from snapshots.checksum import checksum
from snapshots.errors import RankOutOfRange, SnapshotCorrupt, UnsupportedFormatVersion
from snapshots.format import (
    ALIGN,
    FORMAT_VERSION,
    EngineInfo,
    PartInfo,
    RankInfo,
    SnapshotMeta,
    align_up,
    check_name,
    new_snapshot_id,
    parse_meta,
    part_path,
)


@pytest.mark.parametrize("n,expected", [(0, 0), (1, 4096), (4095, 4096), (4096, 4096), (4097, 8192), (10 * 4096, 10 * 4096)])
def test_align_up(n, expected):
    assert ALIGN == 4096
    assert align_up(n) == expected


def test_part_paths():
    assert part_path(3, 12) == "rank-3/part-12.bin"


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "x" * 200, "sp ace"])
def test_bad_names_rejected(bad):
    with pytest.raises(ValueError, match="invalid"):
        check_name("model name", bad)


def test_latest_is_reserved_as_an_id_only():
    with pytest.raises(ValueError, match="reserved"):
        check_name("snapshot id", "latest")
    assert check_name("model name", "Llama-3.1_8B") == "Llama-3.1_8B"


def test_new_ids_sort_by_time_and_are_unique():
    a, b = new_snapshot_id(1_000_000), new_snapshot_id(2_000_000)
    assert a < b
    assert new_snapshot_id(5.0) != new_snapshot_id(5.0)
    check_name("snapshot id", a)


def _meta(**over) -> dict:
    m = SnapshotMeta(
        format_version=FORMAT_VERSION, model="m", snapshot_id="s", created_at=1.0, tp_size=2,
        engine=EngineInfo(name="none"), checksum_algorithm="xxh3_64", align=ALIGN,
        ranks=[RankInfo(rank=r, parts=[PartInfo(path=part_path(r, 0), nbytes=10)], nbytes=10, tensor_bytes=10, num_tensors=1) for r in range(2)],
        total_bytes=20,
    )
    d = json.loads(m.model_dump_json())
    d.update(over)
    return d


def test_meta_round_trip():
    meta = parse_meta(json.dumps(_meta()))
    assert meta.tp_size == 2 and meta.ranks[1].parts[0].path == "rank-1/part-0.bin"


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_unknown_format_version_is_refused(version):
    with pytest.raises(UnsupportedFormatVersion, match="format version"):
        parse_meta(json.dumps(_meta(format_version=version)))


def test_unknown_key_and_bad_json_are_corrupt():
    with pytest.raises(SnapshotCorrupt):
        parse_meta(json.dumps(_meta(surprise=1)))
    with pytest.raises(SnapshotCorrupt, match="not valid JSON"):
        parse_meta(b"{nope")


def test_rank_info_range():
    meta = parse_meta(json.dumps(_meta()))
    assert meta.rank_info(1).rank == 1
    with pytest.raises(RankOutOfRange, match="rank 2 out of range"):
        meta.rank_info(2)
    with pytest.raises(RankOutOfRange):
        meta.rank_info(-1)


def test_checksum_detects_a_single_flipped_bit():
    data = bytearray(b"\x00" * 10000)
    before = checksum(data)
    data[5000] ^= 1
    assert checksum(data) != before
    assert checksum(memoryview(data)) == checksum(bytes(data))
