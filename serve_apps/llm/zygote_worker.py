"""Ray worker launcher that forks the worker from the node zygote (serve_apps/llm/zygote.py).

The warm pool starts engine-host actors with runtime_env {"py_executable": "<python> -m
serve_apps.llm.zygote_worker --zygote SOCKET"}, so the raylet runs `<this> default_worker.py
ARGS...`. This shim imports nothing heavy: it asks the zygote to fork a child that runs
default_worker.py with this process's argv, environment, cwd and stdio (the fds themselves
travel over the socket), then waits for the child, forwards SIGTERM/SIGINT to it, and exits with its exit code. The child
registers with the raylet itself, with its own pid, so Ray's kills reach it directly.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from multiprocessing import reduction


class InheritedFd:
    """An fd of this process, received by the zygote's child as its own fd (not a copy by path)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        # DupFd during the forkserver launch queues the fd to travel with the fork request.
        return (_detach, (reduction.DupFd(self.fd),))


def _detach(dup) -> int:
    return dup.detach()


def run_worker(argv: list[str], env: dict[str, str], cwd: str, stdio: list[int]) -> None:
    """In the zygote's child: become the Ray worker this shim was asked to be."""
    import runpy

    # Its own process group, as the raylet gives every worker: Ray kills a worker's whole group,
    # which here would otherwise be the zygote's.
    os.setpgid(0, 0)
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # Ray's core loads for the first time in this process (the zygote never loads it,
    # zygote.RAY_CORE), so its C++ config reads the raylet's environment set just above.
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


def main() -> int:
    from serve_apps.llm import zygote

    # argv: --zygote SOCKET default_worker.py ARGS... (the pool resolved the socket for this node)
    if len(sys.argv) < 4 or sys.argv[1] != "--zygote":
        sys.exit("usage: python -m serve_apps.llm.zygote_worker --zygote SOCKET default_worker.py ARGS...")
    sock, worker_argv = sys.argv[2], sys.argv[3:]
    if zygote.read_status(sock) is None:
        # The zygote died since the pool checked: be an ordinary worker rather than no worker.
        os.execv(sys.executable, [sys.executable, *worker_argv])
    zygote.attach(sock)
    ctx = multiprocessing.get_context("forkserver")
    child = ctx.Process(target=run_worker, name="ray-worker",
                        args=(worker_argv, dict(os.environ), os.getcwd(), [InheritedFd(fd) for fd in (0, 1, 2)]))
    child.start()
    def forward(sig, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    child.join()
    code = child.exitcode or 0
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
