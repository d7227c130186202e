"""Progress display of `thawline snapshot create --engine vllm`, the longest CLI operation.

Phases: engine boot (vLLM starts; its TP workers write their ranks while loading), one row per
rank with the bytes written so far, then commit (engine state + snapshot.json). The ranks are
written by vLLM's worker processes, so their bytes are read from the store by polling, not
reported by callbacks. Drawn with rich on stderr; stdout keeps only the snapshot URL.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def rank_bytes(fs, snap_path: str, rank: int) -> int:
    """Bytes written so far under <snapshot>/rank-<r>/ (0 before the rank dir exists)."""
    try:
        found = fs.find(f"{snap_path}/rank-{rank}", detail=True)
    except (FileNotFoundError, OSError):
        return 0
    return sum(int(info.get("size") or 0) for info in found.values())


class EngineCreateProgress:
    """on_phase callback for snapshots.vllm_engine.capture.create_engine_snapshot."""

    def __init__(self, progress: Progress, interval_s: float = 0.5):
        self._p, self._interval = progress, interval_s
        self._tasks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, phase: str, capture) -> None:
        if not self._p.console.is_terminal:
            # piped (a log, `--on-cluster`'s task): rich draws the bars only at the end, so each
            # phase is also one plain line, printed when it begins
            self._p.console.print(f"snapshot create: {phase}", highlight=False)
        if phase == "boot":
            self._tasks["boot"] = self._p.add_task("engine boot (vLLM)", total=None)
            w = capture.writer
            path = capture.store._path(w.model, w.snapshot_id)
            ranks = range(int(getattr(w, "tp_size", 1) or 1))
            for r in ranks:
                self._tasks[f"rank{r}"] = self._p.add_task(f"rank {r} capture", total=None)
            self._thread = threading.Thread(target=self._watch, args=(capture.store.fs, path, list(ranks)),
                                            name="snapshot-progress", daemon=True)
            self._thread.start()
        elif phase == "commit":
            self._stop_watch()
            self._finish("boot")
            for key in [k for k in self._tasks if k.startswith("rank")]:
                self._finish(key)
            self._tasks["commit"] = self._p.add_task("commit (engine state, snapshot.json)", total=None)
        elif phase == "done":
            self._finish("commit")

    def _finish(self, key: str) -> None:
        task = self._tasks.get(key)
        if task is not None:
            done = self._p.tasks[task].completed if key.startswith("rank") else 1
            self._p.update(task, total=max(done, 1), completed=max(done, 1))

    def _watch(self, fs, path: str, ranks: list[int]) -> None:
        while not self._stop.wait(self._interval):
            for r in ranks:
                if hasattr(fs, "invalidate_cache"):
                    fs.invalidate_cache(f"{path}/rank-{r}")
                self._p.update(self._tasks[f"rank{r}"], completed=rank_bytes(fs, path, r))

    def _stop_watch(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def close(self) -> None:
        self._stop_watch()


@contextmanager
def engine_create_progress() -> Iterator[EngineCreateProgress]:
    console = Console(stderr=True)
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TimeElapsedColumn()]
    t0 = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as progress:
        cb = EngineCreateProgress(progress)
        try:
            yield cb
        finally:
            cb.close()
    console.print(f"[dim]snapshot create: {time.perf_counter() - t0:.1f}s[/]")
