"""An ASGI app (the gateway, in-process) served by uvicorn on loopback in a thread, for tests whose
client must speak real HTTP (the CLI, which takes a base URL).

    with served(app) as base:      # http://127.0.0.1:<port>
        httpx.get(f"{base}/healthz")
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

from testkit.net import free_port


@contextlib.contextmanager
def served(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    import uvicorn

    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline and t.is_alive():
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        t.join(10)
