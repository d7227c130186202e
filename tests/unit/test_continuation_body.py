"""continuation_body: the request the next target gets after a stream broke mid-answer."""
from __future__ import annotations

from gateway.dispatch import continuation_body


def test_chat_continues_the_partial_answer_and_max_tokens_shrinks_by_the_chunks_sent():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    out = continuation_body("chat", body, ["Hel", "lo", " there"])
    assert out["messages"][-1] == {"role": "assistant", "content": "Hello there"}
    # three text chunks carry at least three tokens: never shrink by more than was sent
    assert out["max_tokens"] == 7
    assert body["max_tokens"] == 10 and len(body["messages"]) == 1  # the original is untouched


def test_completions_append_to_the_prompt_and_keep_at_least_one_token():
    out = continuation_body("completions", {"prompt": "A", "max_completion_tokens": 2}, ["b", "c", "d"])
    assert out["prompt"] == "Abcd" and out["max_completion_tokens"] == 1
