"""Gemini generateContent / streamGenerateContent <-> OpenAI translation."""
from __future__ import annotations

import pytest

from gateway.providers.gemini import StreamTranslator, from_gemini, to_gemini


def test_request_translation():
    out = to_gemini({"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "yo"}],
                     "max_tokens": 7, "temperature": 0.1, "top_p": 0.9, "stop": ["X"], "n": 1})
    assert out["systemInstruction"] == {"parts": [{"text": "sys"}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "yo"}]}]
    assert out["generationConfig"] == {"maxOutputTokens": 7, "temperature": 0.1, "topP": 0.9, "candidateCount": 1,
                                       "stopSequences": ["X"]}


@pytest.mark.parametrize("reason, finish", [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter")])
def test_response_translation(reason, finish):
    out = from_gemini({"candidates": [{"content": {"parts": [{"text": "a"}, {"text": "b"}]}, "finishReason": reason}],
                       "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 3,
                                         "cachedContentTokenCount": 4}, "responseId": "r1"}, "gem")
    assert out["choices"][0]["message"]["content"] == "ab" and out["choices"][0]["finish_reason"] == finish
    assert out["usage"] == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14,
                            "prompt_tokens_details": {"cached_tokens": 4}}
    assert out["id"] == "r1" and out["model"] == "gem"


def test_stream_translation_requires_finish_reason():
    tr = StreamTranslator("gem")
    c1 = tr.feed({"candidates": [{"content": {"parts": [{"text": "He"}]}}]})
    assert c1[0]["choices"][0]["delta"]["role"] == "assistant" and c1[1]["choices"][0]["delta"]["content"] == "He"
    assert not tr.done
    c2 = tr.feed({"candidates": [{"content": {"parts": [{"text": "y"}]}, "finishReason": "STOP"}],
                  "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}})
    assert tr.done and c2[-1]["choices"][0]["finish_reason"] == "stop"
    fin = tr.final()
    assert fin["choices"] == [] and fin["usage"]["total_tokens"] == 5
    with pytest.raises(ValueError):
        tr.feed({"error": {"code": 500, "message": "boom"}})
