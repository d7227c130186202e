"""A multiprocessing forkserver with vLLM already imported, for vLLM's EngineCore process (and
its model-class inspection, model_info.py).

Why: AsyncLLM always runs its EngineCore in a child process (vLLM 0.32 has no in-process async
engine). Inside a Ray actor vLLM forces the `spawn` start method, so that child re-imports
torch + vLLM from scratch (seconds) on every cold start. A forkserver started ahead of
time (in a warm-pool host, before any request) imports them once; each EngineCore is then a
fork of that clean, single-threaded server: no re-import, and none of the Ray worker's threads
are forked (the reason vLLM refuses plain `fork` in Ray actors).

Two details a plain forkserver gets wrong, handled here:
- a forkserver child gets the server's environment, not the parent's current one; vLLM and
  the snapshot loader pass settings through os.environ set just before the start
  (VLLM_CACHE_ROOT, the loader's error file, NCCL_*), so the parent's environment is captured
  at Process() time and applied in the child;
- the EngineCore must fork (not spawn) its own workers: it is not a Ray worker.
"""
from __future__ import annotations

import multiprocessing
import os
import time

# Modules the EngineCore and its CPU/GPU worker import; importing them in the server is the
# whole point. Missing ones (e.g. the CUDA worker on a CPU build) are skipped by the server.
PRELOAD = [
    "torch",
    "ray",
    "vllm.v1.engine.core",
    "vllm.v1.executor.multiproc_executor",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.worker.cpu_worker",
    "vllm.v1.worker.cpu_model_runner",
    "vllm.model_executor.models.llama",
    "snapshots.vllm_engine.loader",
    "snapshots.vllm_engine.capture_loader",
    "serve_apps.llm.forkserver",
    "serve_apps.llm.model_info",
]


def _run_with_env(env: dict[str, str], target, args, kwargs):
    os.environ.clear()
    os.environ.update(env)
    # The EngineCore is not a Ray actor: its workers may fork (vLLM's default outside Ray).
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"
    return target(*args, **kwargs)


class PreloadedContext:
    """Stands in for the multiprocessing context vLLM asks for (get_mp_context())."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx

    def Process(self, group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None):  # noqa: N802
        return self._ctx.Process(group=group, target=_run_with_env, name=name, daemon=daemon,
                                 args=(dict(os.environ), target, tuple(args), dict(kwargs or {})))

    def __getattr__(self, attr):
        return getattr(self._ctx, attr)


_CONTEXT: PreloadedContext | None = None


def _launch_server():
    """The forkserver context, its server started and done importing PRELOAD."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    # A no-op child: returns once the server has finished importing PRELOAD.
    p = ctx.Process(target=time.sleep, args=(0,))
    p.start()
    p.join()
    return ctx


def start() -> float:
    """Start the preloaded forkserver and wait until its imports are done; returns seconds taken.
    Idempotent. Then make vLLM's EngineCore launcher use it."""
    global _CONTEXT
    t0 = time.perf_counter()
    if _CONTEXT is None:
        _CONTEXT = PreloadedContext(_launch_server())
    install()
    return time.perf_counter() - t0


class Launch:
    """start() begun in a thread, so the server's imports run while the caller does its own
    (two single-threaded imports on two cores: a pooled host is ready in about the time of one,
    not the sum). `wait()` finishes what start() does and
    returns the seconds since the launch, or raises the launch's error."""

    def __init__(self) -> None:
        import threading

        self._t0 = time.perf_counter()
        self._ctx = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="thawline-forkserver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._ctx = _launch_server()
        except BaseException as e:  # noqa: BLE001 - re-raised by wait() in the caller's thread
            self._error = e

    def wait(self) -> float:
        global _CONTEXT
        self._thread.join()
        if self._error is not None:
            raise self._error
        if _CONTEXT is None:
            _CONTEXT = PreloadedContext(self._ctx)
        install()
        return time.perf_counter() - self._t0


class ZygoteLaunch:
    """This host's preloaded forkserver, forked from the node zygote (serve_apps/llm/zygote.py)
    instead of started from scratch: the zygote's child already has torch and vLLM's bulk, and
    imports only what the zygote may not (Ray, vLLM's engine core: ~0.6 s). Same `wait()` as
    Launch. The server exits when this process does (its "alive" pipe closes)."""

    def __init__(self, sock: str) -> None:
        from multiprocessing import connection

        from serve_apps.llm import zygote
        from serve_apps.llm.zygote_worker import InheritedFd

        self._t0 = time.perf_counter()
        zygote.attach(sock)
        self._ctx = multiprocessing.get_context("forkserver")
        self._address = connection.arbitrary_address("AF_UNIX")
        with zygote.unix_listener(self._address) as listener:
            alive_r, self._alive_w = os.pipe()
            try:
                server = self._ctx.Process(target=_serve_forkserver, name="thawline-forkserver", daemon=True,
                                           args=(InheritedFd(listener.fileno()), InheritedFd(alive_r), os.getpgid(0)))
                server.start()
            finally:
                os.close(alive_r)

    def wait(self) -> float:
        global _CONTEXT
        from serve_apps.llm import zygote

        zygote.attach(self._address, alive_fd=self._alive_w)
        ready = self._ctx.Process(target=time.sleep, args=(0,))  # returns once PRELOAD is imported
        ready.start()
        ready.join()
        _CONTEXT = PreloadedContext(self._ctx)
        install()
        return time.perf_counter() - self._t0


def _serve_forkserver(listener_fd: int, alive_r: int, host_group: int) -> None:
    """In the zygote's child: become a forkserver with PRELOAD imported, in the host's process
    group, so that Ray's kill of the host's group takes this server and its EngineCores too."""
    import multiprocessing.forkserver as mp_forkserver

    os.setpgid(0, host_group)
    mp_forkserver.main(listener_fd, alive_r, PRELOAD)


def install() -> None:
    """Point vLLM's EngineCore launcher (vllm.v1.engine.utils.get_mp_context) at the forkserver.
    That module imported the function by name, so its reference is the one to replace."""
    import vllm.v1.engine.utils as engine_utils

    if _CONTEXT is not None:
        engine_utils.get_mp_context = lambda: _CONTEXT
        # and vLLM's model-class inspection subprocess, a full vLLM import per engine dir (model_info.py)
        from serve_apps.llm import model_info

        model_info.install(_CONTEXT)
