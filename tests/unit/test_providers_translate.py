"""Translating providers refuse malformed OpenAI shapes with a 400 naming the field (issue 11).

Before, `content: ["hi"]`, `tool_calls: ["x"]` or a tool without its function object crashed the
Anthropic/Gemini translation with AttributeError/TypeError, which the gateway answered as a bare
500 (and, being no GatewayError, it would not have ended the fallback walk as the client's fault).
"""
from __future__ import annotations

import pytest

from gateway.errors import BadRequest, GatewayError
from gateway.providers.anthropic import to_anthropic
from gateway.providers.gemini import to_gemini
from gateway.providers.translate import InvalidRequest, chat_body_from_completion

TRANSLATORS = {"anthropic": lambda b: to_anthropic(b, "claude-x"), "gemini": to_gemini}
U = {"role": "user", "content": "hi"}


def _asst(tool_calls) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": tool_calls}


MALFORMED = [
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "system", "content": [None]}, U]}, "messages[0].content[0]"),
    ({"messages": [U, {"role": "user", "content": [{"type": "image_url", "image_url": "http://x/i.png"}]}]},
     "messages[1].content[0].image_url"),
    ({"messages": [U, _asst(["x"])]}, "messages[1].tool_calls[0]"),
    ({"messages": [U, _asst("x")]}, "messages[1].tool_calls"),
    ({"messages": [U, _asst([{"id": "c1", "type": "function"}])]}, "messages[1].tool_calls[0].function"),
    ({"messages": [U, _asst([{"id": "c1", "function": {"arguments": "{}"}}])]},
     "messages[1].tool_calls[0].function"),
    ({"messages": [U, _asst([{"id": "c1", "function": {"name": "f", "arguments": 3}}])]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [U, {"role": "tool", "content": "42"}]}, "messages[1].tool_call_id"),
    ({"messages": [U], "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"messages": [U], "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     "tools[0].function.parameters"),
    ({"messages": [U], "tools": ["f"]}, "tools[0]"),
    ({"messages": [U], "tools": {"type": "function"}}, "tools"),
]


@pytest.mark.parametrize("provider", sorted(TRANSLATORS))
@pytest.mark.parametrize("body, param", MALFORMED)
def test_malformed_shapes_are_a_400_naming_the_field(provider, body, param):
    with pytest.raises(InvalidRequest) as ei:
        TRANSLATORS[provider](body)
    e = ei.value
    # a GatewayError that is NOT a ValueError: the dispatcher passes it through unchanged
    # (ends the walk, no fallback, no breaker sample) and the client sees OpenAI's error shape
    assert isinstance(e, BadRequest) and isinstance(e, GatewayError) and not isinstance(e, ValueError)
    assert e.status == 400 and e.param == param
    err = e.to_dict()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and param in err["message"]


@pytest.mark.parametrize("args", ["{not json", "[1, 2]"])
def test_anthropic_tool_arguments_must_be_a_json_object(args):
    body = {"messages": [U, _asst([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}])]}
    with pytest.raises(InvalidRequest) as ei:
        to_anthropic(body, "m")
    assert ei.value.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize("provider", sorted(TRANSLATORS))
def test_well_formed_shapes_still_translate(provider):
    body = {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {}},
                                     {"type": "image_url", "image_url": {"url": "https://x/i.png"}}]},
        _asst([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]),
        {"role": "tool", "tool_call_id": "c1", "content": "42"}],
        "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert TRANSLATORS[provider](body)


def test_completion_batch_prompt_is_a_400_on_prompt():
    with pytest.raises(InvalidRequest) as ei:
        chat_body_from_completion({"prompt": ["a", "b"]})
    assert ei.value.param == "prompt" and ei.value.status == 400
