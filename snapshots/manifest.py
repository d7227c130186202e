"""manifest.parquet: one row per tensor per rank, written with pyarrow.

Rows are sorted by (rank, file, offset) and written with one row group per rank, so a rank's
reader decodes only its own row group (`read_rank`), however many ranks the snapshot has.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),  # part path relative to the snapshot dir
        pa.field("offset", pa.int64(), nullable=False),  # byte offset inside `file`, ALIGN-aligned
        pa.field("nbytes", pa.int64(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),  # torch dtype name without "torch.", e.g. bfloat16
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("checksum", pa.uint64(), nullable=False),  # xxh3_64 of the tensor's bytes
    ]
)


@dataclass(frozen=True)
class ManifestRow:
    rank: int
    name: str
    file: str
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    checksum: int


def _sort_key(row: ManifestRow):
    return (row.rank, row.file, row.offset)


def to_table(rows: list[ManifestRow]) -> pa.Table:
    rows = sorted(rows, key=_sort_key)
    cols = {f.name: [] for f in SCHEMA}
    for r in rows:
        cols["rank"].append(r.rank)
        cols["name"].append(r.name)
        cols["file"].append(r.file)
        cols["offset"].append(r.offset)
        cols["nbytes"].append(r.nbytes)
        cols["dtype"].append(r.dtype)
        cols["shape"].append(list(r.shape))
        cols["checksum"].append(r.checksum)
    return pa.table(cols, schema=SCHEMA)


def encode(rows: list[ManifestRow]) -> bytes:
    """Parquet bytes, one row group per rank."""
    table = to_table(rows)
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, SCHEMA) as writer:
        ranks = table.column("rank").to_pylist()
        start = 0
        while start < len(ranks):
            end = start
            while end < len(ranks) and ranks[end] == ranks[start]:
                end += 1
            writer.write_table(table.slice(start, end - start))
            start = end
        if not ranks:
            writer.write_table(table)
    return sink.getvalue()


def _rows_from_table(table: pa.Table) -> list[ManifestRow]:
    d = table.to_pydict()
    return [
        ManifestRow(
            rank=d["rank"][i],
            name=d["name"][i],
            file=d["file"][i],
            offset=d["offset"][i],
            nbytes=d["nbytes"][i],
            dtype=d["dtype"][i],
            shape=tuple(d["shape"][i]),
            checksum=d["checksum"][i],
        )
        for i in range(table.num_rows)
    ]


def _open(data) -> pq.ParquetFile:
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    pf = pq.ParquetFile(source)
    if not pf.schema_arrow.equals(SCHEMA):
        raise ValueError(f"manifest schema mismatch: {pf.schema_arrow} != {SCHEMA}")
    return pf


def decode(data) -> list[ManifestRow]:
    """All rows. `data`: parquet bytes or a binary file object."""
    return _rows_from_table(_open(data).read())


def read_rank(data, rank: int) -> list[ManifestRow]:
    """Only `rank`'s rows: row groups of other ranks are skipped using their min/max statistics."""
    pf = _open(data)
    meta = pf.metadata
    rank_idx = pf.schema_arrow.get_field_index("rank")
    groups = []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(rank_idx).statistics
        if stats is None or not stats.has_min_max or stats.min <= rank <= stats.max:
            groups.append(g)
    if not groups:
        return []
    table = pf.read_row_groups(groups)
    rows = _rows_from_table(table)
    return [r for r in rows if r.rank == rank]
