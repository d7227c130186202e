"""Console helpers for `make demo`: numbered steps with a spinner and their wall time."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
if not console.is_terminal:  # a log file or CI: wide enough that tables are not squeezed
    console = Console(highlight=False, width=140)


class Steps:
    def __init__(self) -> None:
        self.n = 0
        self.t_start = time.perf_counter()
        self.timings: list[tuple[str, float]] = []
        self.failed: list[str] = []

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """`[n] title ... ok (1.2s)`; on failure the step is marked and the error propagates."""
        self.n += 1
        console.rule(f"[bold][{self.n}] {title}", align="left")
        t0 = time.perf_counter()
        try:
            with console.status(f"{title} ..."):
                yield
        except BaseException:
            console.print(f"[red]✗ {title} failed after {time.perf_counter() - t0:.1f}s[/]")
            raise
        dt = time.perf_counter() - t0
        self.timings.append((title, dt))
        console.print(f"[green]✓[/] {title} [dim]({dt:.1f}s)[/]")

    def soft(self, title: str, fn, *args, **kwargs) -> bool:
        """Run one step of the scripted session; a failure is shown and counted, and the session
        goes on (a failing fallback demo should not hide that streaming works)."""
        try:
            with self.step(title):
                fn(*args, **kwargs)
            return True
        except Exception as exc:  # noqa: BLE001 - reported on one line, counted in `failed`
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            console.print(f"  [red]{type(exc).__name__}[/]: {escape(first)}")
            self.failed.append(title)
            return False

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start


def note(text: str) -> None:
    console.print(f"  [dim]{text}[/]")
