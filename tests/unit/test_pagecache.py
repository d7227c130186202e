"""pagecache.read_ahead brings a whole file into the page cache, not just the first readahead
window (what a single whole-file POSIX_FADV_WILLNEED does on Linux)."""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
import time

import pytest

from snapshots.pagecache import read_ahead

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore/fadvise semantics are Linux's")

SIZE = 64 << 20  # several times any usual read_ahead_kb window (128 KiB-8 MiB)


def resident_fraction(path: str) -> float:
    """Share of the file's pages in the page cache: mincore() over a mapping of it. Mapping does
    not fault pages in, so this only observes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mm:
        pages = (len(mm) + page - 1) // page
        vec = (ctypes.c_ubyte * pages)()
        anchor = ctypes.c_char.from_buffer(mm)  # ACCESS_COPY is writable, so from_buffer works
        try:
            if libc.mincore(ctypes.addressof(anchor), len(mm), vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del anchor  # release the export before the mapping closes
        return sum(v & 1 for v in vec) / pages


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_read_ahead_caches_the_whole_file(tmp_path):
    path = str(tmp_path / "part-0.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20) * (SIZE >> 20))
        f.flush()
        os.fsync(f.fileno())  # dirty pages cannot be dropped; written-back ones can
    evict(path)
    if resident_fraction(path) > 0.5:
        pytest.skip("this filesystem keeps the file resident (tmpfs?): nothing to read ahead")

    assert read_ahead(path) == SIZE
    deadline = time.monotonic() + 20
    while (fraction := resident_fraction(path)) < 1.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fraction == 1.0, f"only {fraction:.0%} of the file reached the page cache"


def test_read_ahead_of_a_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_ahead(str(tmp_path / "nope.bin"))
