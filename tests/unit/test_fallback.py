"""Fallback policy: triggers, retry budget, Retry-After, routes' weighted order; and the dispatcher
that acts on it, against in-process scripted providers."""
from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone

import pytest

from gateway.breaker import BreakerSet
from gateway.config import RetryConfig, parse_config
from gateway.dispatch import Dispatcher, Trace
from gateway.errors import GatewayError
from gateway.fallback import FAIL, NEXT, RETRY, Failure, FallbackPlan, Kind, is_retryable_status
from gateway.providers.base import Provider, ProviderError, Response, Usage
from gateway.retry import backoff_s, parse_retry_after, retry_delay
from gateway.routes import compile_routes


@pytest.mark.parametrize("status, retryable", [(408, True), (409, True), (429, True), (500, True), (503, True),
                                               (529, True), (400, False), (401, False), (404, False), (422, False)])
def test_status_triggers(status, retryable):
    assert is_retryable_status(status) is retryable
    assert Failure(Kind.STATUS, status=status).triggers_fallback is retryable


def test_non_status_failures_all_trigger_and_skips_cost_nothing():
    for k in Kind:
        if k is not Kind.STATUS:
            assert Failure(k).triggers_fallback
    plan = FallbackPlan(RetryConfig(budget=0))
    assert plan.decide(Failure(Kind.COLD), retries_done=0, max_retries=3, has_next=True).action == NEXT
    assert plan.decide(Failure(Kind.BREAKER_OPEN), retries_done=0, max_retries=3, has_next=True).action == NEXT
    assert plan.decide(Failure(Kind.BREAKER_OPEN), retries_done=0, max_retries=3, has_next=False).action == FAIL
    # a real attempt needs budget
    assert plan.decide(Failure(Kind.CONNECT), retries_done=0, max_retries=3, has_next=True).action == FAIL


def test_breaker_counts_health_signals_only():
    assert Failure(Kind.STATUS, status=500).counts_against_breaker
    assert Failure(Kind.TIMEOUT).counts_against_breaker
    assert not Failure(Kind.STATUS, status=429).counts_against_breaker
    assert not Failure(Kind.COLD).counts_against_breaker


def test_retry_then_next_then_budget_exhausted():
    plan = FallbackPlan(RetryConfig(budget=3, backoff_base_s=0.1, backoff_max_s=1), random.Random(0))
    f = Failure(Kind.STATUS, status=500)
    d = plan.decide(f, retries_done=0, max_retries=1, has_next=True)
    assert d.action == RETRY and 0 <= d.delay_s <= 0.1
    assert plan.decide(f, retries_done=1, max_retries=1, has_next=True).action == NEXT
    assert plan.decide(f, retries_done=0, max_retries=0, has_next=True).action == NEXT
    assert plan.decide(f, retries_done=0, max_retries=5, has_next=True).action == FAIL   # budget 3 spent
    assert plan.extra_used == 3


def test_client_errors_fail_immediately():
    plan = FallbackPlan(RetryConfig())
    assert plan.decide(Failure(Kind.STATUS, status=400), retries_done=0, max_retries=3, has_next=True).action == FAIL


def test_started_stream_is_never_retried_on_same_target():
    plan = FallbackPlan(RetryConfig(budget=5))
    f = Failure(Kind.STREAM_BROKEN)
    assert plan.decide(f, retries_done=0, max_retries=3, has_next=True, output_started=True).action == NEXT
    assert plan.decide(f, retries_done=0, max_retries=3, has_next=False, output_started=True).action == FAIL


def test_retry_after_is_honoured_or_skipped():
    cfg = RetryConfig(backoff_base_s=0.1, backoff_max_s=5)
    d = retry_delay(0, 2.0, cfg, random.Random(1))
    assert 2.0 <= d <= 2.0 + 0.01
    assert retry_delay(0, 30.0, cfg) is None        # too long: move down the chain instead
    plan = FallbackPlan(cfg)
    f = Failure(Kind.STATUS, status=429, retry_after_s=60)
    assert plan.decide(f, retries_done=0, max_retries=2, has_next=True).action == NEXT


def test_parse_retry_after_forms():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after((now + timedelta(seconds=7)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now=now) == 7.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_is_jittered_and_capped():
    cfg = RetryConfig(backoff_base_s=0.5, backoff_max_s=2)
    rng = random.Random(3)
    vals = [backoff_s(10, cfg, rng) for _ in range(200)]
    assert max(vals) <= 2 and min(vals) >= 0 and len(set(vals)) > 100


def test_route_order_priority_and_weights():
    cfg = parse_config({
        "providers": {"a": {"type": "openai"}, "b": {"type": "anthropic"}},
        "routes": {"r": {"targets": [
            {"provider": "a", "model": "x", "priority": 0, "weight": 3},
            {"provider": "b", "model": "y", "priority": 0, "weight": 1},
            {"provider": "a", "model": "z", "priority": 1}]},
            "s": {"targets": [{"provider": "a", "model": "x"}, {"provider": "b", "model": "y"}]}}})
    routes = compile_routes(cfg)
    assert [t.model for t in routes["s"].order()] == ["x", "y"]
    rng = random.Random(7)
    firsts = [routes["r"].order(rng)[0].model for _ in range(4000)]
    assert all(o[-1].model == "z" for o in (routes["r"].order(rng) for _ in range(50)))
    share = firsts.count("x") / len(firsts)
    assert 0.70 < share < 0.80      # weight 3:1


# ---- the dispatcher against in-process providers (no sockets, no Ray) -------------------------


def _chunk(cid, text=None, role=False, finish=None):
    delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
    return {"id": cid, "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class Scripted(Provider):
    """Plays a script: ("chunk", dict) | ("fail", Kind) | ("sleep", s); records request bodies."""

    def __init__(self, name, script):
        super().__init__(name, None)
        self.script, self.bodies = script, []

    async def call(self, endpoint, body, target):
        self.bodies.append(body)
        return Response({"choices": []}, Usage(1, 1))

    async def stream(self, endpoint, body, target):
        self.bodies.append(body)
        for op, arg in self.script:
            if op == "chunk":
                yield arg
            elif op == "sleep":
                await asyncio.sleep(arg)
            else:
                raise ProviderError(Failure(arg, "scripted"))


class Sink:
    def __init__(self):
        self.starts, self.chunks = [], []

    async def start(self, target, attempts, failures=None):
        self.starts.append((target.id, attempts))

    async def send(self, chunk):
        self.chunks.append(chunk)


def _setup(a_script, b_script, **target_kw):
    cfg = parse_config({"providers": {"a": {"type": "openai"}, "b": {"type": "openai"}},
                        "routes": {"r": {"targets": [{"provider": "a", "model": "x", **target_kw},
                                                     {"provider": "b", "model": "y"}]}}})
    provs = {"a": Scripted("a", a_script), "b": Scripted("b", b_script)}
    d = Dispatcher(provs, BreakerSet(cfg.breaker), RetryConfig(budget=3, backoff_base_s=0))
    return d, compile_routes(cfg)["r"], provs


B_OK = [("chunk", _chunk("b1", role=True)), ("chunk", _chunk("b1", "lo")), ("chunk", _chunk("b1", finish="stop"))]
BODY = {"model": "r", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def test_failure_before_first_token_is_invisible():
    d, route, provs = _setup([("chunk", _chunk("a1", role=True)), ("fail", Kind.CONNECT)], B_OK)
    sink, trace = Sink(), Trace()
    asyncio.run(d.stream(route, "chat", BODY, sink, trace))
    assert sink.starts == [("r/1:b/y", 2)]                  # headers name the target that answered
    assert [c["choices"][0]["delta"] for c in sink.chunks] == [{"role": "assistant", "content": ""},
                                                               {"content": "lo"}, {}]
    assert provs["b"].bodies[0] is BODY                     # not a continuation


def test_break_after_first_token_continues_with_partial_context():
    d, route, provs = _setup([("chunk", _chunk("a1", role=True)), ("chunk", _chunk("a1", "Hel")),
                              ("fail", Kind.STREAM_BROKEN)], B_OK)
    sink, trace = Sink(), Trace()
    asyncio.run(d.stream(route, "chat", BODY, sink, trace))
    texts = [c["choices"][0]["delta"].get("content") for c in sink.chunks]
    assert texts == ["", "Hel", "lo", None]                  # one role chunk, B's role chunk dropped
    assert {c["id"] for c in sink.chunks} == {"a1"}          # one id for the whole answer
    cont = provs["b"].bodies[0]
    assert cont["messages"][-1] == {"role": "assistant", "content": "Hel"} and cont["max_tokens"] == 9
    assert [r.status for r in trace.records] == ["error", "ok"] and trace.records[0].text == "Hel"


def test_first_token_timeout_moves_on_and_break_without_fallback_raises_after_start():
    d, route, _ = _setup([("chunk", _chunk("a1", role=True)), ("sleep", 5)], B_OK, first_token_timeout_s=0.05)
    sink = Sink()
    asyncio.run(d.stream(route, "chat", BODY, sink, Trace()))
    assert sink.starts == [("r/1:b/y", 2)]
    cut = [("chunk", _chunk("b1", role=True)), ("chunk", _chunk("b1", "x")), ("fail", Kind.STREAM_BROKEN)]
    d, route, _ = _setup(cut, cut)
    sink = Sink()
    with pytest.raises(GatewayError) as ei:
        asyncio.run(d.stream(route, "chat", BODY, sink, Trace()))
    assert sink.starts and ei.value.status == 503           # the caller ends the stream with an error event
