"""An ASGI app (the gateway, in-process) behind a real uvicorn HTTP server on a loopback port, in
a daemon thread: for tests that need real HTTP framing without Ray Serve."""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

from testkit.net import free_port


@contextlib.contextmanager
def serve_asgi(app, *, lifespan: str = "off", start_timeout_s: float = 30.0) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT) while uvicorn serves `app`."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           lifespan=lifespan))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + start_timeout_s
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        t.join(15)
