"""Read planning: coalescing, buffer layout and alignment, chunking."""
from __future__ import annotations

from snapshots.format import align_up
from snapshots.manifest import ManifestRow
from snapshots.readplan import chunks, plan


def _layout(sizes: list[int], file: str, rank: int = 0) -> list[ManifestRow]:
    rows, off = [], 0
    for i, n in enumerate(sizes):
        off = align_up(off)
        rows.append(ManifestRow(rank, f"{file}:{i}", file, off, n, "uint8", (n,), 0))
        off += n
    return rows


def test_back_to_back_rows_coalesce_into_one_range_per_part():
    rows = _layout([100, 5000, 1, 4096], "rank-0/part-0.bin") + _layout([7, 9], "rank-0/part-1.bin")
    p = plan(rows)
    assert [(r.file, r.start, r.end) for r in p.ranges] == [
        ("rank-0/part-0.bin", 0, rows[3].offset + 4096),
        ("rank-0/part-1.bin", 0, rows[5].offset + 9),
    ]
    assert p.ranges[1].dest == align_up(p.ranges[0].nbytes)


def test_every_tensor_position_is_4k_aligned_and_disjoint():
    rows = _layout([3, 4097, 10], "rank-1/part-0.bin") + _layout([8192, 1], "rank-1/part-1.bin")
    p = plan(rows)
    spans = sorted((p.positions[r.name], p.positions[r.name] + r.nbytes) for r in rows)
    assert all(start % 4096 == 0 for start, _ in spans)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert p.buffer_bytes >= spans[-1][1]


def test_parts_are_ordered_numerically():
    rows = _layout([1], "rank-0/part-10.bin") + _layout([1], "rank-0/part-9.bin")
    assert [r.file for r in plan(rows).ranges] == ["rank-0/part-9.bin", "rank-0/part-10.bin"]


def test_max_range_bytes_splits_but_never_splits_a_tensor():
    rows = _layout([4096] * 8, "f")
    p = plan(rows, max_range_bytes=3 * 4096)
    assert [len(r.rows) for r in p.ranges] == [3, 3, 2]
    big = plan(_layout([10 * 4096], "g"), max_range_bytes=4096)
    assert len(big.ranges) == 1 and big.ranges[0].nbytes == 10 * 4096


def test_large_gaps_are_not_read_through():
    rows = [ManifestRow(0, "a", "f", 0, 10, "uint8", (10,), 0), ManifestRow(0, "b", "f", 64 << 20, 10, "uint8", (10,), 0)]
    assert len(plan(rows).ranges) == 2


def test_chunks_cover_ranges_exactly():
    rows = _layout([100_000, 3, 250_000], "f")
    p = plan(rows)
    pieces = chunks(p.ranges, 65536)
    assert all(end - start <= 65536 for _, start, end, _ in pieces)
    assert sum(end - start for _, start, end, _ in pieces) == sum(r.nbytes for r in p.ranges)
    for (_, s1, e1, d1), (_, s2, _, d2) in zip(pieces, pieces[1:]):
        assert s2 == e1 and d2 - d1 == s2 - s1
