"""Anthropic Messages <-> OpenAI chat translation, both directions, streaming included."""
from __future__ import annotations

import orjson
import pytest

from gateway.providers.anthropic import StreamTranslator, from_anthropic, to_anthropic, usage_from_anthropic


def test_request_translation():
    body = {"model": "alias", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}],
        "stop": "END", "temperature": 0.2, "max_tokens": 9,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
    out = to_anthropic(body, "claude-x")
    assert out["model"] == "claude-x" and out["system"] == "be brief" and out["max_tokens"] == 9
    assert out["stop_sequences"] == ["END"] and out["temperature"] == 0.2
    assert out["messages"][0]["content"][1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "QUJD"}}
    assert out["messages"][1]["content"][0] == {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}
    assert out["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "42"}]}
    assert out["tools"][0]["input_schema"] == {"type": "object"}
    assert to_anthropic({"messages": [{"role": "user", "content": "x"}]}, "m")["max_tokens"] == 4096


@pytest.mark.parametrize("stop, finish", [("end_turn", "stop"), ("max_tokens", "length"),
                                          ("stop_sequence", "stop"), ("tool_use", "tool_calls")])
def test_response_translation_stop_reasons_and_cache_usage(stop, finish):
    resp = {"id": "msg_1", "model": "claude-x", "content": [{"type": "text", "text": "hello"}], "stop_reason": stop,
            "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 4,
                      "cache_creation_input_tokens": 2}}
    out = from_anthropic(resp)
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert out["choices"][0]["finish_reason"] == finish
    assert out["usage"] == {"prompt_tokens": 16, "completion_tokens": 3, "total_tokens": 19,
                            "prompt_tokens_details": {"cached_tokens": 4}}


def test_tool_use_response():
    out = from_anthropic({"id": "m", "model": "c", "stop_reason": "tool_use", "usage": {},
                          "content": [{"type": "tool_use", "id": "tu", "name": "f", "input": {"q": 1}}]})
    tc = out["choices"][0]["message"]["tool_calls"][0]
    assert tc["function"] == {"name": "f", "arguments": '{"q":1}'} and out["choices"][0]["message"]["content"] is None


def test_stream_translation():
    tr = StreamTranslator()
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_9", "model": "claude-x",
                           "usage": {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 2}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 2}}),
    ]
    chunks = [c for name, data in events for c in tr.feed(name, data)]
    assert not tr.done
    chunks += tr.feed("message_stop", {"type": "message_stop"})
    assert tr.done
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hi!"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 7
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    assert all(c["id"] == "msg_9" and c["object"] == "chat.completion.chunk" for c in chunks)
    with pytest.raises(ValueError, match="Overloaded"):
        tr.feed("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


def test_usage_none_when_absent():
    assert usage_from_anthropic(None) is None
    assert orjson.loads(orjson.dumps(usage_from_anthropic({"input_tokens": 1}).to_openai()))["total_tokens"] == 1
