"""The loader's failure reason, from the TP worker that failed to the process starting the engine.

vLLM reports a worker that raised while loading only as "Engine core initialization failed".
So the starter names a file in $THAWLINE_LOAD_ERROR_FILE before the engine's processes start
(they inherit the environment); the first failing worker writes its one-line reason there
(`report_load_error`), and the starter raises it as EngineStartError naming the snapshot
(`engine_start_errors`). Both ends live here: one owner for the file, its variable and the
exception. No vLLM import: the starter uses this before vLLM is imported.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ERROR_FILE_ENV = "THAWLINE_LOAD_ERROR_FILE"


class EngineStartError(RuntimeError):
    """The engine did not start from the snapshot; the message names the snapshot and the first
    failing rank's reason."""


def report_load_error(message: str) -> None:
    """Worker side: record `message` (its first line) as the start's failure reason. The first
    failing rank's reason wins (exclusive create); the others' are consequences."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(message.splitlines()[0] if message else "unknown error")


@contextmanager
def engine_start_errors(snapshot_url: str) -> Iterator[str]:
    """Starter side, around the engine's construction: points $THAWLINE_LOAD_ERROR_FILE at a fresh
    path (yielded); if the construction raises and a worker wrote a reason there, raises
    EngineStartError("engine start from <snapshot_url> failed: <reason>") from the original
    exception, else lets the exception through. The file is removed either way."""
    fd, error_file = tempfile.mkstemp(prefix="thawline-load-error-")
    os.close(fd)
    os.unlink(error_file)  # the loader creates it exclusively on failure
    os.environ[ERROR_FILE_ENV] = error_file
    try:
        yield error_file
    except Exception as exc:
        reason = Path(error_file).read_text() if os.path.exists(error_file) else None
        if reason:
            raise EngineStartError(f"engine start from {snapshot_url} failed: {reason}") from exc
        raise
    finally:
        if os.path.exists(error_file):
            os.unlink(error_file)
