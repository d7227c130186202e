"""OpenAI pass-through helpers: usage parsing, completion<->chat wrapping, secret scrubbing, checks."""
from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.providers.base import Usage, scrub
from gateway.providers.translate import chat_body_from_completion, completion_chunk_from_chat, completion_from_chat
from gateway.validate import check_chat, check_completions, check_embeddings


def test_usage_roundtrip_and_sum():
    u = Usage.from_openai({"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 1}})
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (5, 2, 1)
    assert (u + u).to_openai()["total_tokens"] == 14
    assert Usage.from_openai(None) is None


def test_completion_wrapping():
    chat = chat_body_from_completion({"model": "m", "prompt": ["say hi"], "max_tokens": 3, "echo": False})
    assert chat["messages"] == [{"role": "user", "content": "say hi"}] and "prompt" not in chat and "echo" not in chat
    with pytest.raises(BadRequest):   # a 400 naming `prompt` (see test_providers_translate)
        chat_body_from_completion({"prompt": ["a", "b"]})
    resp = completion_from_chat({"id": "x", "model": "m", "created": 1, "choices": [
        {"index": 0, "message": {"content": "yo"}, "finish_reason": "length"}], "usage": {"prompt_tokens": 1}})
    assert resp["object"] == "text_completion" and resp["choices"][0]["text"] == "yo"
    assert resp["choices"][0]["finish_reason"] == "length" and resp["usage"] == {"prompt_tokens": 1}
    ch = completion_chunk_from_chat({"id": "x", "choices": [{"index": 0, "delta": {"content": "a"}}]})
    assert ch["choices"][0]["text"] == "a"


def test_scrub_removes_configured_and_key_shaped_secrets():
    msg = "Incorrect API key provided: sk-proj-ABCDEF123456 and mysecretvalue and AIzaSyA1234567890abc, Bearer xyz"
    out = scrub(msg, "mysecretvalue")
    for s in ("sk-proj-ABCDEF123456", "mysecretvalue", "AIzaSyA1234567890abc", "xyz"):
        assert s not in out


@pytest.mark.parametrize("body, param", [
    ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
])
def test_chat_checks_name_the_param(body, param):
    with pytest.raises(BadRequest) as ei:
        check_chat(body)
    assert ei.value.param == param and ei.value.status == 400


def test_completion_and_embedding_checks():
    check_completions({"model": "m", "prompt": [[1, 2], [3]]})
    check_embeddings({"model": "m", "input": ["a", "b"]})
    for bad in ({"model": "m", "prompt": [1, "a"]}, {"model": "m", "prompt": []}, {"model": "m"}):
        with pytest.raises(BadRequest):
            check_completions(bad)
    with pytest.raises(BadRequest):
        check_embeddings({"model": "m", "input": {"a": 1}})
