"""A local Serve LLM app, called through a DeploymentHandle (no second HTTP hop).

Handle methods (docs/INTERFACES.md): `generate(request) -> dict` and
`generate_stream(request) -> async iterator of OpenAI chunks`, last chunk with `usage`.
Cold/warm state comes from the ReadinessBoard actor, read by a background poll and cached
here, so checking "is it cold?" on the request path costs no remote call. The same poll reads
the adapters the app's router listed in its store (`board.adapters(app)`, every
ADAPTERS_POLL_S) into `adapters`, a frozenset: whether "<route>:<adapter>" exists is one set
lookup per request, however many adapters there are.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import AsyncIterator

from gateway.fallback import Failure, Kind
from gateway.llm_protocol import HandleRequest, as_app_error
from gateway.names import NAMESPACE, READINESS_ACTOR
from gateway.readiness import PARKED, WARM
from gateway.providers.base import CHAT, COMPLETIONS, Provider, ProviderError, Response, Usage, unsupported

log = logging.getLogger("thawline.gateway")

POLL_INTERVAL_S = 0.5
ADAPTERS_POLL_S = 2.0
WAKE_EVERY_S = 5.0


class ServeProvider(Provider):
    endpoints = frozenset({CHAT, COMPLETIONS})

    def __init__(self, name: str, cfg) -> None:
        super().__init__(name, cfg)
        self._handle = None
        self._stream_handle = None
        # None until the board answered once: unknown is treated as warm (never spill blindly)
        self._state: dict | None = None
        self._poll: asyncio.Task | None = None
        self._last_wake = float("-inf")
        self._wakes: set = set()
        self.adapters: frozenset[str] = frozenset()   # the board's listing; empty until polled

    async def start(self) -> None:
        self._poll = asyncio.get_running_loop().create_task(self._poll_readiness())

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None

    def _handles(self):
        if self._handle is None:
            from ray import serve
            h = (serve.get_deployment_handle(self.cfg.deployment, self.cfg.app) if self.cfg.deployment
                 else serve.get_app_handle(self.cfg.app))
            self._handle, self._stream_handle = h, h.options(stream=True)
        return self._handle, self._stream_handle

    async def _poll_readiness(self) -> None:
        import ray
        if not ray.is_initialized():
            return  # not inside a Ray cluster (e.g. a unit test): never start one as a side effect
        board = None
        adapters_at = float("-inf")
        while True:
            try:
                if board is None:
                    # a blocking GCS lookup: off the event loop that serves requests
                    board = await asyncio.to_thread(ray.get_actor, READINESS_ACTOR, namespace=NAMESPACE)
                self._state = await board.get.remote(self.cfg.app)
                if time.monotonic() - adapters_at >= ADAPTERS_POLL_S:
                    adapters_at = time.monotonic()
                    await self._poll_adapters(board)
            except ValueError:
                board = None  # not created yet (no LLM replica has reported)
            except Exception as e:  # keep the last known state; the board may be restarting
                log.debug("readiness poll failed: %s", type(e).__name__)
                board = None
            await asyncio.sleep(POLL_INTERVAL_S)

    async def _poll_adapters(self, board) -> None:
        try:
            names = frozenset(await board.adapters.remote(self.cfg.app))
        except Exception as e:  # keep the last listing (a board from an older release has none)
            log.debug("adapter listing poll failed: %s", type(e).__name__)
            return
        if names != self.adapters:
            self.adapters = names

    def wake(self, target) -> None:
        """Spillover skipped this target because it is cold: send it a 1-token request (at most
        one per WAKE_EVERY_S) so Serve's autoscaler starts a replica; the request that spilled
        over is served elsewhere and later ones come back once the board says warm."""
        now = time.monotonic()
        if now - self._last_wake < WAKE_EVERY_S:
            return
        self._last_wake = now
        log.warning("local app %r is cold: sending a wake-up request while traffic spills over", self.cfg.app)
        # A task of its own, in a fresh contextvars.Context: created inside a request handler it
        # would inherit Serve's request context and be tracked as a child of the spilled request,
        # whose lifetime it must not share. Kept referenced until done (the loop holds tasks only
        # weakly).
        task = asyncio.get_running_loop().create_task(self._wake(target.model), context=contextvars.Context())
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _wake(self, model: str) -> None:
        h, _ = self._handles()
        try:
            # no max_wait_s: a wake-up may wait the app's whole cold-start bound, it only has to
            # make the autoscaler start a replica
            await h.generate.remote(HandleRequest(COMPLETIONS, {"model": model, "prompt": " ", "max_tokens": 1,
                                                                "stream": False}).to_wire())
        except Exception as e:  # the wake-up answer is irrelevant; log for diagnosis only
            log.warning("wake-up request to %r failed: %s: %s", self.cfg.app, type(e).__name__, str(e)[:200])

    def readiness(self) -> dict | None:
        """The board's last answer for this app (state, warm_replicas, and while a cold start is
        in progress its phase); None before the first poll."""
        return None if self._state is None else dict(self._state)

    def is_cold(self) -> bool:
        """No warm replica and no parked engine (a parked engine answers within a second: no
        reason to spill over)."""
        st = self._state
        return st is not None and st.get("state") != WARM and st.get("tier") != PARKED

    def _failure(self, e: Exception, *, started: bool) -> ProviderError:
        """An LLM app's own error keeps its status: a 4xx is the request's fault (no fallback,
        no breaker failure; the client gets that 4xx), a 503 cold-start timeout falls back.
        Anything else (a dead replica, a lost actor) is the target's ill health: 503, or a
        broken stream once output went out."""
        app_err = as_app_error(e)
        where = f"local app {self.cfg.app!r}"
        if started:
            why = str(app_err) if app_err is not None else f"{type(e).__name__}: {str(e)[:200]}"
            return ProviderError(Failure(Kind.STREAM_BROKEN, f"{where}: {why}"))
        if app_err is not None:
            err = (app_err.body.get("error") or {}) if isinstance(app_err.body, dict) else {}
            msg, code = err.get("message"), err.get("code")
            return ProviderError(Failure(Kind.STATUS, f"{where}: {msg or app_err}", status=app_err.status,
                                         retry_after_s=5.0 if app_err.status == 503 else None,
                                         code=code if isinstance(code, str) else None))
        return ProviderError(Failure(Kind.STATUS, f"{where}: {type(e).__name__}: {str(e)[:200]}", status=503))

    @staticmethod
    def _request(endpoint: str, body: dict, target, *, stream: bool) -> dict:
        # The target's cold-path budget: its first_token_timeout_s bounds the wait for a replica
        # in the app itself (a clean 503 cold_start_timeout, which falls back), streamed or not.
        # An adapter request names its adapter apart (the body's `model` stays the target's).
        return HandleRequest(endpoint, {**body, "model": target.model, "stream": stream},
                             max_wait_s=target.cfg.first_token_timeout_s, adapter=target.adapter).to_wire()

    async def call(self, endpoint: str, body: dict, target) -> Response:
        if endpoint not in self.endpoints:
            raise unsupported(self.name, endpoint)
        h, _ = self._handles()
        req = self._request(endpoint, body, target, stream=False)
        # Same budget as a stream: up to first_token_timeout_s for a replica (the cold path),
        # then timeout_s for the answer itself.
        budget = target.cfg.first_token_timeout_s + target.cfg.timeout_s
        try:
            async with asyncio.timeout(budget):
                out = await h.generate.remote(req)
        except TimeoutError:
            raise ProviderError(Failure(Kind.TIMEOUT, f"local app {self.cfg.app!r}: no answer within "
                                                      f"{budget:g}s (first_token_timeout_s + timeout_s)")) from None
        except Exception as e:
            raise self._failure(e, started=False) from None
        return Response(out, Usage.from_openai(out.get("usage")))

    async def stream(self, endpoint: str, body: dict, target) -> AsyncIterator[dict]:
        if endpoint not in self.endpoints:
            raise unsupported(self.name, endpoint)
        _, sh = self._handles()
        req = self._request(endpoint, body, target, stream=True)
        gen = sh.generate_stream.remote(req)
        started = False
        try:
            async for chunk in gen:
                started = True
                yield chunk
        except asyncio.CancelledError:
            gen.cancel()
            raise
        except Exception as e:
            raise self._failure(e, started=started) from None
        # the generator finished normally: that is this protocol's terminal marker
