"""A stuck OTLP collector (accepts connections, reads every byte, never answers) must not hold the
gateway's graceful shutdown past Serve's limit: RequestTracer.close() gives up within its budget
and drops the unsent spans. Real OTLP/HTTP exporter, real loopback sockets, no Ray."""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from gateway.config import TracingConfig
from gateway.tracing import SHUTDOWN_BUDGET_S, build_tracer
from serve_apps.gateway import DEFAULT_DEPLOYMENT_OPTIONS
from tests.conftest import free_port

pytestmark = pytest.mark.integration


class StuckCollector:
    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.connections, self.bytes_in = 0, 0
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        try:
            while chunk := conn.recv(65536):
                self.bytes_in += len(chunk)   # read everything, answer nothing
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self._open:
            c.close()


def test_stuck_collector_does_not_outlast_the_graceful_shutdown():
    limit = DEFAULT_DEPLOYMENT_OPTIONS["graceful_shutdown_timeout_s"]
    assert SHUTDOWN_BUDGET_S < limit / 2   # the rest of the grace is the ledger's and the leases'
    collector = StuckCollector()
    try:
        tracer = build_tracer(TracingConfig(otlp_endpoint=f"http://127.0.0.1:{collector.port}/v1/traces"),
                              cold_start_lookup=None)
        # several export batches (512 spans each): unbounded, each would wait on the collector
        for i in range(2000):
            tracer.tracer.start_span(f"s{i}").end()

        async def shutdown():
            await asyncio.wait_for(tracer.close(), timeout=limit)

        asyncio.run(shutdown())   # TimeoutError here: shutdown would outlast Serve's limit
        assert collector.connections >= 1 and collector.bytes_in > 0   # an export really was stuck on it
    finally:
        collector.close()
