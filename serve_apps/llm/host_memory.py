"""Host memory an engine host holds: what a parked engine counts against `parked_memory_gb`."""
from __future__ import annotations


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (the forkserver, the EngineCore and
    its rank workers). Pages forked children share are counted in each: an upper bound, which is
    the safe side for a budget."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited meanwhile
            pass
    return total
