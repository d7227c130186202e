"""Read local files ahead into the kernel page cache, so a later reader copies from memory.

Why chunks: `posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED)` on a whole file looks like it asks
for all of it, but Linux caps one WILLNEED at the device's readahead window (`read_ahead_kb`):
only the first window of a large part file gets cached. One call per window-sized chunk submits
the whole file; the kernel queues the reads asynchronously and returns at once, much faster than
a sequential read loop.
"""
from __future__ import annotations

import os

# Larger than any usual read_ahead_kb (128 KiB-8 MiB) would be cut to the window; smaller just
# means more syscalls.
CHUNK_BYTES = 8 << 20


def read_ahead(path: str, *, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Ask the kernel to read all of `path` into the page cache; returns the file size.

    Asynchronous: returns once the reads are queued. Harmless on filesystems without readahead
    (the advice is ignored)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for offset in range(0, size, chunk_bytes):
            os.posix_fadvise(fd, offset, chunk_bytes, os.POSIX_FADV_WILLNEED)
        return size
    finally:
        os.close(fd)
