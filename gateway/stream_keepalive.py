"""Keep a slow stream's connection alive until its first token.

A cold local model can take minutes to its first token (a route's first_token_timeout_s), while
a load balancer closes a connection that carried no byte for its idle timeout (300 s by default
on AWS). So a stream that has no token after `interval_s` sends its 200 headers then, and an SSE
comment (`: keep-alive`, which OpenAI SDKs and EventSource ignore) every `interval_s` until the
first token. Streams faster than that are untouched and keep their x-thawline-target /
-attempts / -fallbacks headers; a stream whose headers went out early sends them in band, as SSE
comment lines before its first token (response_headers.outcome_comment).

The fallback chain is unaffected: no data frame goes out before the first token, so a target
that fails before it is still replaced invisibly; a stream that then fails for good ends with
an SSE error event (inference.py does that whenever the sink has `started`).
"""
from __future__ import annotations

import asyncio
import logging

from gateway.asgi import SSE_HDRS, SSESink
from gateway.response_headers import early_headers, outcome_comment

log = logging.getLogger("thawline.gateway")
KEEPALIVE = b": keep-alive\n\n"


class KeepAliveSink(SSESink):
    """SSESink whose response starts early (headers, then comment frames) while no token came."""

    __slots__ = ("_interval", "_lock", "_done", "_task")

    def __init__(self, send, rate: dict[str, str] | None, replica: tuple[bytes, bytes] | None,
                 interval_s: float | None):
        super().__init__(send, rate, replica)
        self._interval, self._lock, self._done = interval_s, asyncio.Lock(), False
        self._task = asyncio.get_running_loop().create_task(self._beat()) if interval_s else None

    async def _beat(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                # the lock orders this against start()/stop(): nothing goes out after either
                async with self._lock:
                    if self._done:
                        return
                    if not self.started:
                        # no target yet: the rate-limit and replica headers only
                        headers = early_headers([*SSE_HDRS], self.rate, self.replica)
                        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
                        self.started = True
                    await self._send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the client went away: the request's own writes see it
            log.debug("stream keep-alive stopped: %s", e)

    async def stop(self) -> None:
        """No keep-alive after this returns (the first token, or the stream's end)."""
        if self._done:
            return
        async with self._lock:
            self._done = True
        self.cancel()

    def cancel(self) -> None:
        """stop() for a request being torn down (no await): at most one frame still in flight."""
        self._done = True
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def start(self, target, attempts: int, failures: list[str] | None = None) -> None:
        await self.stop()
        if not self.started:
            await super().start(target, attempts, failures)
        else:
            # the headers went out before any target answered: say which one did, in band
            await self._send({"type": "http.response.body", "more_body": True,
                              "body": outcome_comment(target, attempts, failures)})
