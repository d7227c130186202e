"""Byte progress bars on stderr (rich), for create / fetch / verify.

The library side only ever sees a callable `progress(nbytes)`; this module turns it into a bar.
stdout stays clean for results (e.g. `create` prints the snapshot URL as its last stdout line).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn


@contextlib.contextmanager
def byte_bar(description: str, total: int | None = None) -> Iterator["ByteBar"]:
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=total)
        yield ByteBar(prog, task)


class ByteBar:
    def __init__(self, prog: Progress, task):
        self._prog = prog
        self._task = task

    def __call__(self, nbytes: int) -> None:  # rich's Progress is thread-safe (internal lock)
        self._prog.advance(self._task, nbytes)

    def set_total(self, total: int) -> None:
        self._prog.update(self._task, total=total)
