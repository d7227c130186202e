"""The client handle's HTTP transport against a loopback upstream speaking OpenAI's real wire
format (testkit/fake_providers.py): JSON and SSE answers, typed errors, sync and async."""
from __future__ import annotations

import pytest

from gateway.client import AsyncClient, Client, RateLimited, StreamError, Unavailable
from testkit.fake_providers import FakeServer
from tests.conftest import free_port


@pytest.fixture(scope="module")
def upstream():
    server = FakeServer(free_port()).start()
    yield server
    server.stop()


def test_chat_complete_and_stream_are_typed(upstream):
    with Client(upstream.openai_url, api_key="sk-x") as c:
        r = c.chat("m", "say hi", max_tokens=5)
        assert r.text == "Hello from fake openai!"
        assert r.usage.prompt_tokens == 7 + 2 and r.usage.completion_tokens > 0
        assert r.meta.elapsed_s is not None and "content-type" in r.meta.headers
        done = c.complete("m", "say hi", max_tokens=5)
        assert done.text and done.usage.total_tokens > 0
        stream = c.chat("m", [{"role": "user", "content": "say hi"}], stream=True)
        pieces = [chunk.text for chunk in stream]
        assert "".join(pieces) == "Hello from fake openai!"
        assert len([p for p in pieces if p]) == 5  # really streamed, piece by piece
        assert stream.usage is not None and stream.usage.completion_tokens > 0  # include_usage asked for
        assert stream.meta.first_chunk_s is not None


def test_upstream_errors_raise_typed_exceptions(upstream):
    with Client(upstream.openai_url, api_key="sk-x") as c:
        with pytest.raises(RateLimited) as rl:
            c.chat("m-429", "x")
        assert rl.value.retry_after == 1.0 and rl.value.status == 429
        with pytest.raises(Unavailable) as down:
            c.chat("m-500", "x")
        assert down.value.status == 500
        with pytest.raises(RateLimited):  # a refused stream raises at the call, before iteration
            c.chat("m-429", "x", stream=True)


def test_stream_cut_mid_way_never_looks_finished(upstream):
    with Client(upstream.openai_url, api_key="sk-x", timeout_s=10) as c:
        stream = c.chat("m-cut", "x", stream=True)
        with pytest.raises((StreamError, Unavailable)):
            for _ in stream:
                pass


def test_unreachable_gateway_is_unavailable():
    with Client(f"http://127.0.0.1:{free_port()}/v1") as c:
        with pytest.raises(Unavailable, match="unreachable"):
            c.models()


async def test_async_client_same_api(upstream):
    async with AsyncClient(upstream.openai_url, api_key="sk-x") as c:
        r = await c.chat("m", "hi", max_tokens=3)
        assert r.text.startswith("Hello")
        stream = await c.chat("m", "hi", stream=True)
        assert await stream.text() == "Hello from fake openai!"
        emb = await c.embed("m", ["a", "b"])
        assert len(emb.vectors) == 2 and len(emb.vectors[0]) > 0
        with pytest.raises(RateLimited):
            await c.chat("m-429", "x", stream=True)
