"""Host memory an engine host holds: what a parked engine counts against `parked_memory_gb`."""
from __future__ import annotations


def tree_memory_bytes(pid: int) -> int:
    """Memory of a process and all its descendants (the forkserver, the EngineCore and its rank
    workers), as the sum of their proportional set sizes: pages that forked children share
    (torch, vLLM) are split among them instead of counted in each, so the sum is what the tree
    really holds. Where PSS cannot be read, resident set size (an upper bound) instead."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            try:
                total += p.memory_full_info().pss
            except (AttributeError, psutil.AccessDenied):
                total += p.memory_info().rss
        except psutil.Error:  # exited meanwhile
            pass
    return total
