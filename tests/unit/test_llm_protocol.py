"""The LLM app <-> gateway contract: errors that survive pickling, status mapping, SSE endings."""
from __future__ import annotations

import asyncio
import pickle

from gateway.fallback import Kind
from gateway.llm_protocol import (
    ColdStartTimeout,
    LLMAppError,
    as_app_error,
    cold_start_timeout,
    error_body,
    status_of,
)
from serve_apps.llm.sse import sse_frames


def test_app_error_survives_pickling_with_status_and_body():
    """Ray pickles exceptions between replicas; the old LLMAppError came back as
    UnserializableException and the gateway turned every engine 400 into a 503."""
    e = LLMAppError(400, error_body("max_tokens is too large", 400))
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is LLMAppError and back.status == 400 and back.body == e.body
    assert "max_tokens is too large" in str(back)
    cold = pickle.loads(pickle.dumps(cold_start_timeout("tiny", 2.5)))
    assert isinstance(cold, ColdStartTimeout) and cold.status == 503
    assert cold.body["error"]["code"] == "cold_start_timeout" and "2.5s" in cold.body["error"]["message"]


def test_as_app_error_unwraps_causes():
    inner = LLMAppError(404, error_body("no such model", 404))

    class Wrapper(Exception):  # the shape of Ray's RayTaskError: the original as .cause
        def __init__(self, cause):
            super().__init__(str(cause))
            self.cause = cause

    assert as_app_error(Wrapper(inner)) is inner
    assert as_app_error(RuntimeError("boom")) is None


def test_status_of_error_bodies():
    assert status_of(error_body("bad", 400)) == 400
    assert status_of({"error": {"message": "x", "type": "invalid_request_error", "code": "weird"}}) == 400
    assert status_of({"error": {"message": "x", "type": "server_error", "code": None}}) == 500
    assert status_of({"error": "not a dict"}) == 500


def test_engine_4xx_is_the_clients_fault_no_fallback_no_breaker():
    from gateway.providers.serve import ServeProvider

    class Cfg:
        app = "tiny-llm"

    p = ServeProvider.__new__(ServeProvider)
    p.cfg = Cfg()
    f = p._failure(LLMAppError(400, error_body("This model's maximum context length is 256", 400)),
                   started=False).failure
    assert f.kind is Kind.STATUS and f.status == 400
    assert not f.triggers_fallback and not f.counts_against_breaker
    assert "maximum context length" in f.message
    cold = p._failure(cold_start_timeout("tiny", 1), started=False).failure
    assert cold.status == 503 and cold.triggers_fallback
    dead = p._failure(RuntimeError("actor died"), started=False).failure
    assert dead.status == 503 and dead.triggers_fallback and dead.counts_against_breaker
    broken = p._failure(LLMAppError(500, error_body("engine died", 500)), started=True).failure
    assert broken.kind is Kind.STREAM_BROKEN


async def _collect(first, chunks, fail_after=None, want_usage=False):
    async def rest():
        for i, c in enumerate(chunks):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("engine died mid-answer")
            yield c
    return [f async for f in sse_frames(first, rest(), want_usage)]


def test_sse_ends_a_finished_stream_with_done():
    frames = asyncio.run(_collect({"choices": [{"text": "a"}]}, [{"choices": [{"text": "b"}]},
                                                                 {"choices": [], "usage": {"total_tokens": 2}}]))
    assert frames[-1] == "data: [DONE]\n\n"
    assert not any("usage" in f for f in frames), "usage only when the client asked"


def test_sse_error_event_is_never_followed_by_done():
    frames = asyncio.run(_collect({"choices": [{"text": "a"}]}, [{"choices": [{"text": "b"}]}, {}], fail_after=1))
    assert '"error"' in frames[-1] and "engine died mid-answer" in frames[-1]
    assert all("[DONE]" not in f for f in frames)


# -- the handle request: one builder (to_wire), one reader (from_wire) ------------------------------

def test_handle_request_round_trips_and_leaves_out_an_unset_wait():
    from gateway.llm_protocol import HandleRequest

    req = HandleRequest("chat", {"model": "m", "messages": []}, max_wait_s=2.5)
    assert req.to_wire() == {"endpoint": "chat", "body": {"model": "m", "messages": []}, "max_wait_s": 2.5}
    assert HandleRequest.from_wire(req.to_wire()) == req
    assert HandleRequest("completions", {"prompt": "x"}).to_wire() == {"endpoint": "completions",
                                                                        "body": {"prompt": "x"}}
    # the HTTP header arrives as a string; an unreadable one means "the app's own bound"
    assert HandleRequest.from_wire({"endpoint": "chat", "body": {}, "max_wait_s": "1.5"}).max_wait_s == 1.5
    assert HandleRequest.from_wire({"endpoint": "chat", "body": {}, "max_wait_s": "soon"}).max_wait_s is None
    assert HandleRequest.from_wire({"endpoint": "chat", "body": {}, "max_wait_s": -3}).max_wait_s == 0.0


def test_a_malformed_handle_request_is_a_400_in_the_apps_error_shape():
    import pytest

    from gateway.llm_protocol import HandleRequest

    for bad in ({"endpoint": "embeddings", "body": {}}, {"endpoint": "chat", "body": "text"}, ["chat"]):
        with pytest.raises(LLMAppError) as e:
            HandleRequest.from_wire(bad)
        assert e.value.status == 400 and e.value.body["error"]["code"] == 400


def test_an_engine_answer_is_an_error_only_when_it_carries_the_error_body():
    from gateway.llm_protocol import app_error_in

    err = app_error_in(error_body("prompt too long", 400))
    assert isinstance(err, LLMAppError) and err.status == 400
    assert app_error_in({"id": "x", "choices": []}) is None
