"""Runs one request down its route's chain: skips, retries, fallbacks, streams that break.

Decisions come from the pure policy in fallback.py; this module does the I/O and keeps a
`Trace` of what happened (for the outcome headers, gateway/response_headers.py, and the ledger).

Streams: chunks that carry no output yet (the role chunk) are held back until the first real
token, so a target that dies before its first token is replaced invisibly. After the first
token, a break either continues on the next target with the partial output as context, or ends
the stream with an SSE error event; it never ends like a finished answer.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from gateway.breaker import BreakerSet
from gateway.config import RetryConfig
from gateway.errors import BadRequest, GatewayError, NotFound, RateLimited, Unavailable, UpstreamError
from gateway.fallback import NEXT, RETRY, Failure, FallbackPlan, Kind
from gateway.providers.base import CHAT, Provider, ProviderError, Response, Usage
from gateway.response_headers import error_headers
from gateway.routes import CompiledRoute, Target
from gateway.trace_marks import attempt_mark


@dataclass(slots=True)
class AttemptRecord:
    target: Target
    usage: Usage | None
    status: str            # "ok" | "error"
    ttft_ms: float | None = None
    text: str = ""         # output this attempt produced (streams; for local token counts)


@dataclass(slots=True)
class Trace:
    attempts: int = 0
    target: Target | None = None          # the target that produced the answer (or the last tried)
    records: list[AttemptRecord] = field(default_factory=list)
    ttft_ms: float | None = None
    failures: list[str] = field(default_factory=list)
    stream_id: str | None = None          # id/model of the first streamed chunk (for the usage chunk)
    stream_model: str | None = None
    started_at: float = field(default_factory=time.perf_counter)
    cost_usd: float = 0.0                 # what the ledger rows priced at record time (hosted targets)
    # attempt marks for the request's trace span (gateway/tracing.py); None (the default, tracing
    # off): nothing is recorded
    timeline: list | None = None


class StreamSink(Protocol):
    async def start(self, target: Target, attempts: int, failures: list[str] | None = None) -> None: ...
    async def send(self, chunk: dict) -> None: ...


def _chunk_output(chunk: dict, endpoint: str) -> tuple[str, bool]:
    """(text in this chunk, whether it carries any output or a finish)."""
    choices = chunk.get("choices")
    if not choices:
        return "", False
    c = choices[0]
    if endpoint == CHAT:
        d = c.get("delta") or {}
        text = d.get("content") or ""
        return text, bool(text or d.get("tool_calls") or c.get("finish_reason"))
    text = c.get("text") or ""
    return text, bool(text or c.get("finish_reason"))


def continuation_body(endpoint: str, body: dict, partial_chunks: list[str]) -> dict:
    """The request for the next target after a break: the partial output (the text of each chunk
    sent so far) becomes context.

    Chat: the partial answer is appended as an assistant turn (Anthropic and vLLM continue such
    a trailing assistant message; others treat it as context). Completions: it is appended to
    the prompt. max_tokens shrinks by the tokens already emitted, counted as the number of text
    chunks: each carries at least one token, so this never shrinks it by more than was sent
    (a provider that packs several tokens into a chunk leaves the next target some extra room).
    """
    partial = "".join(partial_chunks)
    min_emitted_tokens = len(partial_chunks)
    out = dict(body)
    if endpoint == CHAT:
        out["messages"] = [*body.get("messages", []), {"role": "assistant", "content": partial}]
    elif isinstance(body.get("prompt"), str):
        out["prompt"] = body["prompt"] + partial
    for k in ("max_tokens", "max_completion_tokens"):
        if isinstance(out.get(k), int):
            out[k] = max(1, out[k] - min_emitted_tokens)
    return out


def error_for(f: Failure | None, trace: Trace) -> GatewayError:
    hdrs = error_headers(trace.target, trace.attempts, trace.failures)
    if f is None:
        return Unavailable("no target of this route is available", headers=hdrs)
    if f.kind is Kind.UNSUPPORTED and f.param and trace.attempts == 0:
        return BadRequest(f"no target of this model can honour '{f.param}' ({f.message})", param=f.param,
                          code="unsupported_parameter", headers=hdrs)
    if f.kind is Kind.UNSUPPORTED and trace.attempts == 0:
        return BadRequest(f"no target of this model serves this endpoint ({f.message})", code="unsupported_endpoint",
                          headers=hdrs)
    if f.kind is Kind.STATUS and f.status is not None and not f.triggers_fallback:
        if f.status == NotFound.status and f.code == NotFound.code:
            # a local app does not have the model (an adapter missing from its store): a 404, which
            # the inference path re-renders for the model the client sent (gateway/adapters.py)
            return NotFound(f.message, headers=hdrs)
        if f.status in (401, 403):
            return UpstreamError(f.message, headers=hdrs)
        # the request itself was refused upstream (e.g. 400): the client must change it
        return GatewayError(f.message, status=f.status, type="invalid_request_error", code="upstream_rejected",
                            headers=hdrs)
    if f.kind is Kind.STATUS and f.status == 429:
        return RateLimited(f"upstream rate limit: {f.message}", retry_after_s=f.retry_after_s or 1.0, headers=hdrs)
    return Unavailable(f"all targets failed; last: {f.message or f.kind.value}", headers=hdrs)


class Dispatcher:
    def __init__(self, providers: dict[str, Provider], breakers: BreakerSet, retry: RetryConfig,
                 metrics: Any = None):
        self.providers, self.breakers, self.retry, self.metrics = providers, breakers, retry, metrics

    def _skip(self, route: CompiledRoute, target: Target, provider: Provider, endpoint: str,
              has_next: bool, body: dict | None = None) -> Failure | None:
        if not provider.supports(endpoint):
            return Failure(Kind.UNSUPPORTED, f"{target.id} does not serve /v1/{endpoint}")
        if target.adapter is not None and target.adapter not in provider.adapters:
            # another serve target of the route lists it (the request was admitted on that)
            return Failure(Kind.UNSUPPORTED, f"{target.id} does not list adapter {target.adapter!r}")
        if body is not None:
            field = provider.refuses(endpoint, body)
            if field is not None:
                return Failure(Kind.UNSUPPORTED, f"{target.id} cannot honour '{field}'", param=field)
        if route.cfg.spillover_when_cold and has_next and provider.is_cold():
            wake = getattr(provider, "wake", None)
            if wake is not None:
                wake(target)  # start the scale-up now; this request spills to the next target
            return Failure(Kind.COLD, f"{target.id} is cold")
        if not self.breakers.allow(target.id):
            return Failure(Kind.BREAKER_OPEN, f"{target.id}: circuit open")
        return None

    def _observe(self, target: Target, f: Failure | None) -> None:
        if f is None:
            self.breakers.record(target.id, True)
        elif f.is_attempt:
            # a 429 or a 4xx shows the target is alive: it resolves a half-open probe as healthy
            self.breakers.record(target.id, not f.counts_against_breaker)
        if self.metrics is not None and (f is None or f.is_attempt):
            self.metrics.breaker_state(target.id, self.breakers.state(target.id))

    def _moved(self, route: CompiledRoute, target: Target, f: Failure, trace: Trace) -> None:
        trace.failures.append(f"{target.id}={f.reason}")
        if self.metrics is not None:
            self.metrics.fallback(route.alias, target.id, f.reason)

    async def _walk(self, route: CompiledRoute, endpoint: str, trace: Trace, st: "_StreamState",
                    attempt: Callable[[Target, Provider], Awaitable[Failure | None]],
                    body: dict | None = None) -> None:
        """Walks the route's chain, the one policy `call` and `stream` share: skip a target that
        cannot serve, else `attempt` it; on a failure retry it, move to the next or give up, as
        FallbackPlan decides. Returns after the first attempt that succeeds (`attempt` gives
        None); raises the GatewayError for the last failure otherwise. `st.started` tells the
        plan that a stream already sent output (a plain call's state never starts)."""
        plan = FallbackPlan(self.retry)
        order = route.order()
        last: Failure | None = None
        n = len(order)
        for i, target in enumerate(order):
            provider = self.providers[target.provider_name]
            has_next = i + 1 < n
            retries = 0
            while True:
                f = self._skip(route, target, provider, endpoint, has_next, body)
                if f is None:
                    trace.attempts += 1
                    trace.target = target
                    mark = None if trace.timeline is None else attempt_mark(trace, target, provider)
                    try:
                        f = await attempt(target, provider)
                    except GatewayError:
                        # refused before anything was sent (a shape this target cannot take):
                        # no outcome to record, but a half-open probe must not stay taken
                        self.breakers.release(target.id)
                        if mark is not None:
                            mark.finish(trace, "refused")
                        raise
                    if mark is not None:
                        mark.finish(trace, f)
                    self._observe(target, f)
                    if f is None:
                        return
                last = f
                d = plan.decide(f, retries_done=retries, max_retries=target.cfg.max_retries, has_next=has_next,
                                output_started=st.started)
                if d.action == RETRY:
                    retries += 1
                    await asyncio.sleep(d.delay_s)
                    continue
                if d.action == NEXT:
                    self._moved(route, target, f, trace)
                    break
                raise error_for(f, trace)
        raise error_for(last, trace)

    async def call(self, route: CompiledRoute, endpoint: str, body: dict, trace: Trace) -> Response:
        resp: Response | None = None

        async def attempt(target: Target, provider: Provider) -> Failure | None:
            nonlocal resp
            try:
                resp = await provider.call(endpoint, body, target)
            except ProviderError as e:
                return e.failure
            except ValueError as e:   # a translation refused this request's shape
                raise BadRequest(str(e)) from None
            return None

        await self._walk(route, endpoint, trace, _StreamState(), attempt, body)
        assert resp is not None and trace.target is not None
        trace.records.append(AttemptRecord(trace.target, resp.usage, "ok"))
        return resp

    async def stream(self, route: CompiledRoute, endpoint: str, body: dict, sink: StreamSink,
                     trace: Trace) -> None:
        """Streams chunks into `sink`; usage per attempt lands in `trace.records`. Raises
        GatewayError on failure; if the sink already started, the caller must end the stream
        with an SSE error event."""
        st = _StreamState()

        async def attempt(target: Target, provider: Provider) -> Failure | None:
            # After a break mid-answer the next target continues it, the partial output as
            # context. The plan never retries a target once output started, so the partial
            # here is the one the break left.
            cur_body = (continuation_body(endpoint, body, st.partial)
                        if st.started else body)
            rec = AttemptRecord(target, None, "error")
            trace.records.append(rec)
            f = await self._stream_one(provider, target, endpoint, cur_body, sink, trace, rec, st)
            if f is None:
                rec.status = "ok"
            return f

        await self._walk(route, endpoint, trace, st, attempt, body)

    async def _stream_one(self, provider: Provider, target: Target, endpoint: str, body: dict,
                          sink: StreamSink, trace: Trace, rec: AttemptRecord, st: "_StreamState") -> Failure | None:
        loop = asyncio.get_running_loop()
        agen = provider.stream(endpoint, body, target)
        held: list[dict] = []
        got = False
        t0 = time.perf_counter()
        try:
            # one timer for the whole attempt: first-token deadline, then re-armed per chunk
            # as the inter-chunk gap limit (cheaper than a wait_for task per chunk)
            async with asyncio.timeout(target.cfg.first_token_timeout_s) as tm:
                async for chunk in agen:
                    u = chunk.get("usage")
                    if u is not None:
                        rec.usage = Usage.from_openai(u)
                        if not chunk.get("choices"):
                            continue   # the caller emits one usage chunk (all attempts) at the end
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                    text, has_output = _chunk_output(chunk, endpoint)
                    if not got:
                        if not has_output:
                            if not st.started:
                                held.append(chunk)   # role chunk: wait for a real token
                            continue                 # a continuation's role chunk is redundant
                        got = True
                        now = time.perf_counter()
                        rec.ttft_ms = (now - t0) * 1000.0
                        if trace.ttft_ms is None:
                            trace.ttft_ms = (now - trace.started_at) * 1000.0
                        if not st.started:
                            await _open_stream(held[0] if held else chunk, held, target, sink, trace, st)
                    tm.reschedule(loop.time() + target.cfg.timeout_s)
                    if st.first_id is not None and chunk.get("id") != st.first_id:
                        chunk["id"] = st.first_id   # one id for the whole answer across targets
                    if text:
                        rec.text += text
                        st.partial.append(text)
                    await sink.send(chunk)
        except TimeoutError:
            if got:
                return Failure(Kind.TIMEOUT, f"{target.id}: no chunk for {target.cfg.timeout_s}s")
            return Failure(Kind.FIRST_TOKEN_TIMEOUT,
                           f"{target.id}: no first token within {target.cfg.first_token_timeout_s}s")
        except ProviderError as e:
            return e.failure
        except ValueError as e:
            # only request translation raises ValueError (providers map bad upstream data to
            # ProviderError): the request's shape is unsupported by this target
            raise BadRequest(str(e)) from None
        finally:
            await agen.aclose()
        if not st.started:
            # an answer with no output at all (finished with no tokens): still a valid stream
            await _open_stream(held[0] if held else None, held, target, sink, trace, st)
        return None


async def _open_stream(first: dict | None, held: list[dict], target: Target, sink: StreamSink, trace: Trace,
                       st: "_StreamState") -> None:
    """Start the client's stream on this attempt's first chunk: the answer's id and model come
    from it, and the role chunks held back until a real token (or the end) go out first."""
    st.started = True
    st.first_id = trace.stream_id = first.get("id") if first is not None else None
    trace.stream_model = first.get("model") if first is not None else None
    await sink.start(target, trace.attempts, trace.failures)
    for h in held:
        await sink.send(h)


@dataclass(slots=True)
class _StreamState:
    started: bool = False
    first_id: str | None = None
    partial: list[str] = field(default_factory=list)
