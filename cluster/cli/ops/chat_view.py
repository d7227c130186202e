"""What `thawline chat` shows besides the answer: cold-start progress while it waits, and the
model's text made safe for a terminal.

`describe` and `safe_text` are pure. `ColdProgress` polls the gateway's /v1/models, whose entries
carry a local model's readiness (gateway/admin.py: state, and while a cold start is in progress its
phase, from the readiness board), on a thread of its own until the first token arrives.
"""
from __future__ import annotations

import re
import threading
from typing import Any, Callable

from gateway import cold_start_phases as cs
from gateway.readiness import COLD, WARM

# C0 controls except \t and \n, DEL, and C1 controls: a model's output may contain any of them,
# and a terminal acts on them (ESC starts escape sequences: colours, cursor moves, title changes).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """`text` with every control byte but newline and tab shown as `\\xNN` instead of acted on."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


_PHASE_WORDS = {
    None: "a replica is starting",
    cs.IMPORTS: "imports (loading vLLM)",
    cs.ENGINE_PREPARE: "engine prepare / engine start with weights (snapshot, engine start)",
}


def describe(model: str, ready: dict | None) -> str | None:
    """One progress line for a local model's readiness (None: nothing to say, it is warm)."""
    if not ready or ready.get("state") == WARM:
        return None
    app = safe_text(str(ready.get("app") or model))
    if ready.get("state") == COLD:
        return f"cold start of {app}: {cs.SERVE_SCHEDULING} (waiting for a replica)"
    phase = ready.get("phase")
    words = _PHASE_WORDS.get(phase, safe_text(str(phase)))
    since = ready.get("starting_s")
    return f"cold start of {app}: {words}" + (f", {since:.0f}s since the replica started" if since else "")


class ColdProgress:
    """Polls `fetch()` (the route's readiness dict or None) every `interval_s` until `stop()`,
    printing a line through `emit` whenever what `describe` says changes."""

    def __init__(self, model: str, fetch: Callable[[], dict | None], emit: Callable[[str], Any], *,
                 interval_s: float = 1.0) -> None:
        self.model, self.fetch, self.emit, self.interval_s = model, fetch, emit, interval_s
        self.shown: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thawline-cold-progress", daemon=True)

    def __enter__(self) -> "ColdProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self._thread.is_alive():
            self._thread.join(5)

    def stop(self) -> None:
        """No more lines (the first token is here); does not wait for a poll in flight."""
        self._stop.set()

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self.interval_s):
            try:
                line = describe(self.model, self.fetch())
            except Exception:       # progress is best effort: the answer itself is what matters
                continue
            if line is not None and line.split(",")[0] != (last or "").split(",")[0] and not self._stop.is_set():
                self.shown.append(line)
                self.emit(line)
            last = line or last

    @property
    def was_cold(self) -> bool:
        return bool(self.shown)


def route_readiness(client: Any, model: str) -> dict | None:
    """The `thawline` readiness of route `model` from the gateway's /v1/models (None if absent)."""
    for m in client.models().data:
        if m.id == model:
            return (m.model_extra or {}).get("thawline")
    return None


def stream_turn(client: Any, probe: Any, model: str, history: list[dict], *, max_tokens: int,
                interactive: bool, err: Any) -> str:
    """One streamed answer: its text on stdout (control bytes escaped) as it arrives; on stderr,
    cold-start progress while no token has come yet, then tokens, first-token time and the target
    that answered (x-thawline-target). Returns the raw answer text."""
    import sys

    import typer
    from rich.markup import escape

    def note(line: str) -> None:
        err.print(f"[dim]{escape(line)}[/]", highlight=False)

    progress = ColdProgress(model, lambda: route_readiness(probe, model), note)
    answer: list[str] = []
    with progress:
        stream = client.chat(model, history, stream=True, max_tokens=max_tokens)
        if interactive:
            typer.echo(f"{model}> ", nl=False)
        for chunk in stream:
            if chunk.text:
                progress.stop()
            answer.append(chunk.text)
            typer.echo(safe_text(chunk.text), nl=False)
            sys.stdout.flush()
    typer.echo("")
    meta, parts = stream.meta, []
    if stream.usage:
        parts.append(f"{stream.usage.prompt_tokens}+{stream.usage.completion_tokens} tokens")
    if meta.first_chunk_s is not None:
        parts.append(f"first token {meta.first_chunk_s:.2f}s")
    target = meta.thawline().get("target")
    if target:
        parts.append(f"{'warm now; ' if progress.was_cold else ''}answered by target {safe_text(target)}")
    if parts:
        note(f"({', '.join(parts)})")
    return "".join(answer)
