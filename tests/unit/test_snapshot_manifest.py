"""manifest.parquet: round trip, per-rank row groups, rank-only reads."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from snapshots import manifest
from snapshots.manifest import ManifestRow


def _rows(ranks: int, per_rank: int) -> list[ManifestRow]:
    rows = []
    for r in range(ranks):
        off = 0
        for i in range(per_rank):
            rows.append(ManifestRow(r, f"layers.{i}.w", f"rank-{r}/part-0.bin", off, 100 + i, "bfloat16", (10, 5 + i), (r << 32) | i | 1 << 63))
            off += 4096
    return rows


def test_round_trip_keeps_every_field_including_full_uint64_checksums():
    rows = _rows(3, 4)
    back = manifest.decode(manifest.encode(list(reversed(rows))))
    assert back == sorted(rows, key=lambda r: (r.rank, r.file, r.offset))
    assert all(r.checksum >= 1 << 63 for r in back)


def test_one_row_group_per_rank():
    data = manifest.encode(_rows(4, 3))
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 4


def test_read_rank_returns_only_that_ranks_rows():
    rows = _rows(4, 3)
    data = manifest.encode(rows)
    for r in range(4):
        got = manifest.read_rank(data, r)
        assert [x.rank for x in got] == [r] * 3
        assert got == [x for x in rows if x.rank == r]
    assert manifest.read_rank(data, 7) == []


def test_empty_manifest_round_trips():
    assert manifest.decode(manifest.encode([])) == []


def test_foreign_schema_is_rejected():
    sink = io.BytesIO()
    pq.write_table(pa.table({"rank": [0], "name": ["x"]}), sink)
    with pytest.raises(ValueError, match="schema mismatch"):
        manifest.decode(sink.getvalue())
