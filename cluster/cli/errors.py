"""One readable line and a non-zero exit for every CLI failure."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, TypeVar

import typer

F = TypeVar("F", bound=Callable)


class CLIError(Exception):
    """An error whose message is already the one line the user should read."""


def one_line_errors(func: F) -> F:
    """Turn any exception escaping a command into `error: <message>` on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130)
        except Exception as exc:  # noqa: BLE001 - the CLI's single error boundary
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.stderr.flush()
    raise typer.Exit(code)


# Storage clients log each failed retry with a traceback (gcsfs: "_request out of retries"), and
# google.auth warns about missing credentials before falling back to anonymous access: on a
# terminal that buries the one error line the command ends with.
_NOISY_LOGGERS = ("gcsfs", "google.auth", "google.cloud", "fsspec", "s3fs", "aiobotocore", "botocore")


def quiet_library_loggers() -> None:
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
