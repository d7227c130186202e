"""OpenTelemetry traces (gateway/tracing.py) exported over real OTLP/HTTP protobuf to a loopback
receiver: the request span, one child per attempt (a fallback: 2 attempts), their attributes, and
the cold-start phases of a cold local target. The gateway runs in-process (no Ray): in-test
providers stand in for the upstreams."""
from __future__ import annotations

import hashlib
import http.server
import threading

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.fallback import Failure, Kind
from gateway.handle_ingress import call_asgi
from gateway.providers.base import Provider, ProviderError, Response, Usage
from gateway.tracing import build_tracer
from tests.conftest import free_port

pytestmark = pytest.mark.integration
KEY = "sk-trace-test"


class Receiver:
    """POST /v1/traces (OTLP/HTTP protobuf) -> decoded spans in `self.spans`."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                assert self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf"
                msg = trace_service_pb2.ExportTraceServiceRequest()
                msg.ParseFromString(body)
                outer.requests.append(msg)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def spans(self) -> list:
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def service_names(self) -> set[str]:
        return {a.value.string_value for r in self.requests for rs in r.resource_spans
                for a in rs.resource.attributes if a.key == "service.name"}


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value"))
    return out


class Fails(Provider):
    async def call(self, endpoint, body, target):
        raise ProviderError(Failure(Kind.STATUS, "upstream 500", status=500))


class Answers(Provider):
    def __init__(self, name, cfg, cold: bool = False):
        super().__init__(name, cfg)
        self.cold = cold

    def is_cold(self) -> bool:
        return self.cold

    async def call(self, endpoint, body, target):
        return Response({"id": "x", "object": "chat.completion", "model": target.model, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}, Usage(3, 1))


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def make_gateway(receiver: Receiver, *, tracing: bool = True) -> Gateway:
    cfg = parse_config({
        "providers": {"bad": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"},
                      "good": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"},
                      "local": {"type": "serve", "app": "tiny-app"}},
        "routes": {"chain": {"targets": [{"provider": "bad", "model": "m1"}, {"provider": "good", "model": "m2"}]},
                   "cold": {"targets": [{"provider": "local", "model": "tiny"}]}},
        "keys": [{"id": "k1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        "tracing": {"otlp_endpoint": f"http://127.0.0.1:{receiver.port}/v1/traces", "service_name": "tl-test"}
        if tracing else {},
    })
    phases = {"serve_scheduling": 0.5, "worker_start": 0.25, "imports": 0.1, "engine_prepare": 1.0,
              "engine_start_with_weights": 2.0,
              "first_token": 0.15, "total": 4.0}

    async def lookup(app):
        assert app == "tiny-app"
        return {"replica": "r-1", "phases_s": phases}

    tracer = build_tracer(cfg.tracing, cold_start_lookup=lookup)
    providers = {"bad": Fails("bad", cfg.providers["bad"]), "good": Answers("good", cfg.providers["good"]),
                 "local": Answers("local", cfg.providers["local"], cold=True)}
    return Gateway(cfg, limits=None, costs=None, providers=providers, tracer=tracer)


def _chat(model: str) -> dict:
    return {"method": "POST", "path": "/v1/chat/completions", "headers": {"authorization": f"Bearer {KEY}"},
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}}


async def test_fallback_request_exports_a_span_with_two_attempt_children(receiver):
    gw = make_gateway(receiver)
    out = await call_asgi(gw, _chat("chain"))
    assert out["status"] == 200 and out["headers"]["x-thawline-attempts"] == "2"
    assert gw.tracer.force_flush()
    assert receiver.service_names() == {"tl-test"}
    spans = receiver.spans
    (root,) = [s for s in spans if s.name == "gateway.request"]
    kids = sorted([s for s in spans if s.parent_span_id == root.span_id], key=lambda s: s.start_time_unix_nano)
    assert [k.name for k in kids] == ["attempt", "attempt"]
    assert all(k.trace_id == root.trace_id for k in kids)
    ra = attrs(root)
    assert ra["thawline.route"] == "chain" and ra["thawline.key_id"] == "k1" and ra["thawline.attempts"] == 2
    assert ra["http.response.status_code"] == 200 and ra["thawline.fallbacks"] == "chain/0:bad/m1=500"
    a1, a2 = (attrs(k) for k in kids)
    assert a1["thawline.target"] == "chain/0:bad/m1" and a1["thawline.outcome"] == "500"
    assert a1["http.response.status_code"] == 500 and "thawline.ttft_ms" not in a1
    assert kids[0].status.code == 2                      # STATUS_CODE_ERROR
    assert a2["thawline.target"] == "chain/1:good/m2" and a2["thawline.outcome"] == "ok"
    assert a2["thawline.ttft_ms"] >= 0 and a2["thawline.model"] == "m2"
    assert root.start_time_unix_nano <= kids[0].start_time_unix_nano <= kids[1].end_time_unix_nano <= root.end_time_unix_nano
    await gw.shutdown()


async def test_cold_local_attempt_carries_the_cold_start_phases(receiver):
    gw = make_gateway(receiver)
    out = await call_asgi(gw, _chat("cold"))
    assert out["status"] == 200
    await gw.tracer.close()                                # waits for the board lookup, flushes
    spans = receiver.spans
    by_name = {s.name: s for s in spans}
    att, cold = by_name["attempt"], by_name["cold_start"]
    assert attrs(att)["thawline.cold"] is True
    assert cold.parent_span_id == att.span_id and attrs(cold)["thawline.replica"] == "r-1"
    phase_spans = sorted([s for s in spans if s.parent_span_id == cold.span_id], key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in phase_spans] == ["serve_scheduling", "worker_start", "imports", "engine_prepare",
                                             "engine_start_with_weights", "first_token"]
    prepare = by_name["engine_prepare"]
    assert prepare.end_time_unix_nano - prepare.start_time_unix_nano == 1_000_000_000
    for a, b in zip(phase_spans, phase_spans[1:]):      # laid end to end
        assert a.end_time_unix_nano == b.start_time_unix_nano


async def test_tracing_off_builds_no_tracer(receiver):
    gw = make_gateway(receiver, tracing=False)
    assert gw.tracer is None and gw._inference.tracer is None
    out = await call_asgi(gw, _chat("chain"))
    assert out["status"] == 200 and receiver.requests == []


def _upstream_gateway(receiver: Receiver | None, fake) -> Gateway:
    """A fallback chain over the real OpenAI-compatible provider and a loopback upstream that
    records each request's headers (testkit.fake_providers: `-500` models answer 500)."""
    cfg = parse_config({
        "providers": {"up": {"type": "openai_compatible", "base_url": fake.openai_url}},
        "routes": {"chain": {"targets": [{"provider": "up", "model": "gpt-tp-500"},
                                         {"provider": "up", "model": "gpt-tp"}]}},
        "keys": [{"id": "k1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        "tracing": {"otlp_endpoint": f"http://127.0.0.1:{receiver.port}/v1/traces"} if receiver else {},
    })
    return Gateway(cfg, limits=None, costs=None, tracer=build_tracer(cfg.tracing, cold_start_lookup=None))


@pytest.fixture
def fake_upstream():
    from testkit.fake_providers import FakeServer

    server = FakeServer(free_port()).start()
    yield server
    server.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_calls_carry_the_attempt_traceparent(receiver, fake_upstream, stream):
    """Each upstream call gets W3C `traceparent` naming the request's trace and its own attempt
    span, so an upstream that traces continues the same trace."""
    gw = _upstream_gateway(receiver, fake_upstream)
    req = _chat("chain")
    req["body"]["stream"] = stream
    out = await call_asgi(gw, req)
    assert out["status"] == 200 and out["headers"]["x-thawline-attempts"] == "2"
    assert gw.tracer.force_flush()
    seen = [r["traceparent"] for r in fake_upstream.state.requests]
    assert len(seen) == 2 and all(seen)
    (root,) = [s for s in receiver.spans if s.name == "gateway.request"]
    attempts = sorted([s for s in receiver.spans if s.name == "attempt"], key=lambda s: s.start_time_unix_nano)
    expected = [f"00-{root.trace_id.hex()}-{a.span_id.hex()}-01" for a in attempts]
    assert seen == expected and len(set(seen)) == 2
    assert all(a.parent_span_id == root.span_id for a in attempts)
    await gw.shutdown()


async def test_no_traceparent_upstream_when_tracing_is_off(fake_upstream):
    gw = _upstream_gateway(None, fake_upstream)
    out = await call_asgi(gw, _chat("chain"))
    assert out["status"] == 200
    assert [r["traceparent"] for r in fake_upstream.state.requests] == [None, None]
    await gw.shutdown()
