"""OpenTelemetry traces of gateway requests, exported over OTLP/HTTP (protobuf).

Off unless gateway.yaml sets `tracing.otlp_endpoint`: then `build_tracer` returns None and the
request path makes no tracer call at all (Inference checks `tracer is None`; the dispatcher takes
attempt marks only when a request's Trace.timeline is a list).

When on, each inference request gets, once it is finished (spans are built after the fact from
the marks, with their real start and end times, so nothing OTel-related runs while it waits):

  gateway.request  (SERVER)  route, key, endpoint, stream, http status, attempts, target, fallbacks
    attempt        (CLIENT)  one per attempt: target, provider, model, outcome, status, ttft_ms
      cold_start             local (serve) targets that were cold when the attempt began: the
        <phase>              last cold start's phases from the readiness board
                             (ReadinessBoard.last_cold_start; names and order:
                             gateway/cold_start_phases.py), laid end to end from the
                             attempt's start

Upstream calls carry the attempt's `traceparent` (trace_marks.TRACEPARENT), so an upstream that
traces joins the same trace: the ids are chosen while the request runs and the spans built
afterwards take them (`_PresetIds`).

The cold-start lookup is injected (`cold_start_lookup(app) -> awaitable dict | None`); the
default one reads the readiness board actor through Ray, imported lazily.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Awaitable, Callable

from gateway import cold_start_phases as cs
from gateway.trace_marks import Timeline

log = logging.getLogger("thawline.gateway")

ColdLookup = Callable[[str], Awaitable[dict | None]]
# A collector that accepts connections but never answers must not hold a replica's graceful
# shutdown past Serve's limit (serve_apps/gateway.py graceful_shutdown_timeout_s): each export
# gives up after EXPORT_TIMEOUT_S, and close() waits at most SHUTDOWN_BUDGET_S in all, the
# unsent spans being dropped then.
EXPORT_TIMEOUT_S = 2.0
SHUTDOWN_BUDGET_S = 5.0


async def _board():
    """The readiness board actor, or None (outside a Ray cluster, or not created yet)."""
    import ray

    from gateway.names import NAMESPACE, READINESS_ACTOR
    if not ray.is_initialized():
        return None
    try:
        return await asyncio.to_thread(ray.get_actor, READINESS_ACTOR, namespace=NAMESPACE)
    except ValueError:
        return None


async def board_cold_start(app: str) -> dict | None:
    """The readiness board's last cold start of `app` (None outside a Ray cluster)."""
    board = await _board()
    return None if board is None else await board.last_cold_start.remote(app)


async def board_cold_starts(app: str) -> list[dict]:
    """The readiness board's newest cold starts of `app`, newest first ([] outside a cluster)."""
    board = await _board()
    return [] if board is None else await board.cold_starts.remote(app)


def _preset_ids():
    """An OTel IdGenerator that hands out the ids a traced request already chose (its trace id,
    its attempts' span ids: they went upstream in traceparent), else random ones."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class _PresetIds(RandomIdGenerator):
        def __init__(self) -> None:
            self.trace_id = 0
            self.span_id = 0

        def generate_trace_id(self) -> int:
            v, self.trace_id = self.trace_id, 0
            return v or super().generate_trace_id()

        def generate_span_id(self) -> int:
            v, self.span_id = self.span_id, 0
            return v or super().generate_span_id()

    return _PresetIds()


class RequestTracer:
    def __init__(self, *, service_name: str, exporter: Any, cold_start_lookup: ColdLookup | None = board_cold_start,
                 batch: bool = True):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        self.ids = _preset_ids()
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}), id_generator=self.ids)
        self.provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("thawline.gateway")
        self.cold_start_lookup = cold_start_lookup
        self._tasks: set[asyncio.Task] = set()

    @staticmethod
    def start() -> tuple[list, int]:
        """(timeline for Trace.timeline, request start in ns)."""
        return Timeline(), time.time_ns()

    def finish(self, *, trace: Any, start_ns: int, endpoint: str, route: str, key_id: str, stream: bool,
               http_status: int, error: str | None = None) -> None:
        """Emit the request's spans. With a cold local attempt, the board is read first (in a
        task: the response is not held up)."""
        req = dict(trace=trace, start_ns=start_ns, end_ns=time.time_ns(), endpoint=endpoint, route=route,
                   key_id=key_id, stream=stream, http_status=http_status, error=error)
        cold_apps = {m.app for m in trace.timeline or () if m.cold and m.app}
        if cold_apps and self.cold_start_lookup is not None:
            try:
                task = asyncio.get_running_loop().create_task(self._emit_after_lookup(req, cold_apps))
            except RuntimeError:
                self._emit(req, {})
                return
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._emit(req, {})

    async def _emit_after_lookup(self, req: dict, apps: set[str]) -> None:
        cold: dict[str, dict] = {}
        for app in apps:
            try:
                info = await self.cold_start_lookup(app)
            except Exception as e:      # the spans go out without the phases
                log.debug("cold-start lookup for %r failed: %s", app, e)
                info = None
            if info:
                cold[app] = info
        self._emit(req, cold)

    def _emit(self, req: dict, cold: dict[str, dict]) -> None:
        from opentelemetry import trace as ot
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind, Status, StatusCode

        tr = req["trace"]
        # _emit runs start to end on the loop thread: a preset id is taken by the next start_span
        self.ids.trace_id = getattr(tr.timeline, "trace_id", 0)
        # an empty parent context: always a root span, so it always takes the preset trace id
        root = self.tracer.start_span("gateway.request", context=Context(), kind=SpanKind.SERVER,
                                      start_time=req["start_ns"], attributes={
            "thawline.route": req["route"], "thawline.key_id": req["key_id"], "thawline.endpoint": req["endpoint"],
            "thawline.stream": req["stream"], "http.response.status_code": req["http_status"],
            "thawline.attempts": tr.attempts, "thawline.target": tr.target.id if tr.target is not None else "",
            "thawline.fallbacks": ",".join(tr.failures)})
        if tr.ttft_ms is not None:
            root.set_attribute("thawline.ttft_ms", tr.ttft_ms)
        for f in tr.failures:
            root.add_event("fallback", {"thawline.reason": f})
        ctx = ot.set_span_in_context(root)
        for i, m in enumerate(tr.timeline or ()):
            attrs = {"thawline.attempt": i + 1, "thawline.target": m.target_id, "thawline.provider": m.provider,
                     "thawline.model": m.model, "thawline.outcome": m.outcome, "thawline.cold": m.cold}
            if m.http_status is not None:
                attrs["http.response.status_code"] = m.http_status
            ttft = self._ttft(tr, m)
            if ttft is not None:
                attrs["thawline.ttft_ms"] = ttft
            self.ids.span_id = m.span_id
            span = self.tracer.start_span("attempt", context=ctx, kind=SpanKind.CLIENT, start_time=m.start_ns,
                                          attributes=attrs)
            if m.outcome != "ok":
                span.set_status(Status(StatusCode.ERROR, m.outcome))
            info = cold.get(m.app) if m.cold and m.app else None
            if info:
                self._cold_spans(ot.set_span_in_context(span), m, info)
            span.end(end_time=m.end_ns or req["end_ns"])
        if req["http_status"] >= 400:
            root.set_status(Status(StatusCode.ERROR, req["error"] or str(req["http_status"])))
        root.end(end_time=req["end_ns"])

    def _cold_spans(self, ctx, m, info: dict) -> None:
        phases = info.get("phases_s") or {}
        t = m.start_ns
        steps = cs.ordered(phases)
        total = phases.get(cs.TOTAL) or sum(secs for _, secs in steps)
        parent = self.tracer.start_span("cold_start", context=ctx, start_time=t, attributes={
            "thawline.app": m.app, "thawline.replica": str(info.get("replica", "")), "thawline.total_s": float(total)})
        from opentelemetry import trace as ot
        pctx = ot.set_span_in_context(parent)
        for p, secs in steps:
            d = int(secs * 1e9)
            self.tracer.start_span(p, context=pctx, start_time=t, attributes={"thawline.seconds": secs}
                                   ).end(end_time=t + d)
            t += d
        parent.end(end_time=max(t, m.start_ns + int(float(total) * 1e9)))

    @staticmethod
    def _ttft(tr: Any, m: Any) -> float | None:
        if m.rec_index < len(tr.records) and tr.records[m.rec_index].target.id == m.target_id:
            rec = tr.records[m.rec_index]
            if rec.ttft_ms is not None:
                return rec.ttft_ms
        if m.outcome == "ok" and m.end_ns:
            return (m.end_ns - m.start_ns) / 1e6   # a plain call: its first byte is its answer
        return None

    async def close(self, budget_s: float = SHUTDOWN_BUDGET_S) -> None:
        """Flush and stop, in at most `budget_s`. The flush runs in a daemon thread (not
        asyncio.to_thread, whose pool threads the interpreter joins at exit) so a stuck export
        left behind holds nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=budget_s / 2)
        done = loop.create_future()

        def run() -> None:
            try:
                self.provider.shutdown()
            finally:
                try:
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
                except RuntimeError:
                    pass  # the loop is gone: nobody waits any more

        threading.Thread(target=run, name="otel-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), max(0.0, deadline - loop.time()))
        except TimeoutError:
            log.warning("trace collector did not take the last spans within %.0fs; they are dropped", budget_s)

    def force_flush(self) -> bool:
        return self.provider.force_flush()


def build_tracer(cfg: Any, *, cold_start_lookup: ColdLookup | None = board_cold_start) -> RequestTracer | None:
    """A RequestTracer exporting to `cfg.otlp_endpoint` (gateway.yaml `tracing`), or None (off)."""
    if cfg is None or not cfg.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint, headers=dict(cfg.headers) or None,
                                timeout=EXPORT_TIMEOUT_S)
    return RequestTracer(service_name=cfg.service_name, exporter=exporter, cold_start_lookup=cold_start_lookup)
