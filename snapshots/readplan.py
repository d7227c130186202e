"""Pure read planning: coalesce a rank's manifest rows into few large ranged reads.

Rows of one part file sit back to back at 4 KiB aligned offsets, so a rank's rows coalesce into
one range per part file; the ranges are then cut into chunks so a thread pool can issue them in
parallel. No I/O here, so it is unit-tested.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .manifest import ManifestRow

# Gaps up to this size are read through (cheaper than another request); padding is < 4 KiB.
MAX_GAP = 1 << 20


@dataclass
class ReadRange:
    file: str
    start: int  # byte offset in `file`
    end: int  # exclusive
    dest: int  # byte offset of `start` in the destination buffer
    rows: list[ManifestRow] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class ReadPlan:
    ranges: list[ReadRange]
    buffer_bytes: int
    positions: dict[str, int]  # tensor name -> byte offset in the buffer


def plan(rows: list[ManifestRow], *, max_range_bytes: int | None = None, max_gap: int = MAX_GAP) -> ReadPlan:
    """Group rows by file (sorted by offset) into ranges; lay ranges out back to back in one buffer.

    max_range_bytes caps a range (a single larger tensor still gets one range of its own).
    """
    by_file: dict[str, list[ManifestRow]] = {}
    for r in rows:
        by_file.setdefault(r.file, []).append(r)
    ranges: list[ReadRange] = []
    positions: dict[str, int] = {}
    dest = 0
    for f in sorted(by_file, key=_part_order):
        cur: ReadRange | None = None
        for r in sorted(by_file[f], key=lambda x: x.offset):
            end = r.offset + r.nbytes
            if (
                cur is not None
                and r.offset - cur.end <= max_gap
                and (max_range_bytes is None or end - cur.start <= max_range_bytes)
                and r.offset >= cur.end
            ):
                cur.end = end
            else:
                if cur is not None:
                    dest += cur.nbytes
                    # keep every range start 4 KiB aligned in the buffer too, so dtype views stay aligned
                    dest = (dest + 4095) // 4096 * 4096
                cur = ReadRange(f, r.offset, end, dest)
                ranges.append(cur)
            cur.rows.append(r)
            positions[r.name] = cur.dest + (r.offset - cur.start)
        if cur is not None:
            dest += cur.nbytes
            dest = (dest + 4095) // 4096 * 4096
    return ReadPlan(ranges, dest, positions)


def chunks(ranges: list[ReadRange], chunk_bytes: int) -> list[tuple[str, int, int, int]]:
    """Cut ranges into (file, start, end, dest) pieces of at most chunk_bytes for the thread pool."""
    out = []
    for rg in ranges:
        pos = rg.start
        while pos < rg.end:
            end = min(rg.end, pos + chunk_bytes)
            out.append((rg.file, pos, end, rg.dest + (pos - rg.start)))
            pos = end
    return out


def _part_order(path: str):
    # rank-<r>/part-<p>.bin sorts numerically by p (part-10 after part-9)
    try:
        return (0, int(path.rsplit("part-", 1)[1].split(".")[0]), path)
    except (IndexError, ValueError):
        return (1, 0, path)
