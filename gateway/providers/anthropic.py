"""Anthropic Messages API <-> OpenAI chat, both ways, streaming included.

Usage: Anthropic's `input_tokens` excludes cache reads and cache writes; OpenAI's
`prompt_tokens` includes every prompt token. So prompt_tokens = input + cache_read +
cache_creation, and cached_tokens = cache_read (the discounted part).
"""
from __future__ import annotations

import time
from typing import Any, AsyncIterator

import orjson

from gateway.providers.base import CHAT, COMPLETIONS, Response, Usage, scrub, unsupported
from gateway.providers.http import HttpProvider, broken
from gateway.providers.translate import (chat_body_from_completion, chat_chunk, chat_response,
                                         check_chat_shapes, common_refusal, completion_chunk_from_chat,
                                         completion_from_chat, content_text, function_tools, invalid, json_mode,
                                         stop_list)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI does not

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "tool_use": "tool_calls", "pause_turn": "stop", "refusal": "content_filter"}


def _image_block(part: dict) -> dict:
    url = (part.get("image_url") or {}).get("url", "")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0]
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict] | str:
    if isinstance(content, str) or content is None:
        return content or ""
    out = []
    for p in content:
        if p.get("type") == "text":
            out.append({"type": "text", "text": p.get("text", "")})
        elif p.get("type") == "image_url":
            out.append(_image_block(p))
    return out


def _tool_input(args: Any, param: str) -> dict:
    """OpenAI sends tool-call arguments as a JSON string; Anthropic wants the object itself."""
    if not isinstance(args, str):
        return args
    try:
        obj = orjson.loads(args)
    except orjson.JSONDecodeError:
        raise invalid(param, "must be a JSON object encoded as a string") from None
    if not isinstance(obj, dict):
        raise invalid(param, "must be a JSON object encoded as a string")
    return obj


JSON_TOOL = "json_response"   # the forced tool that carries a JSON-mode answer (json_object)


def json_tool_name(body: dict) -> str | None:
    """Name of the forced tool that carries the JSON answer, or None when not in JSON mode.

    The Messages API has no response_format; Anthropic's documented way to get JSON out is a
    tool whose input_schema is the wanted schema, forced with tool_choice {type: tool}. Its
    `input` is the answer: from_anthropic / StreamTranslator turn it back into message content.
    """
    jm = json_mode(body)
    if jm is None:
        return None
    return (body["response_format"].get("json_schema") or {}).get("name") or JSON_TOOL


def refuses(body: dict) -> str | None:
    """The field an Anthropic target cannot honour for `body`, or None (see Provider.refuses)."""
    check_chat_shapes(body)
    field = common_refusal(body)
    if field is not None:
        return field
    if json_mode(body) is not None and function_tools(body):
        # JSON mode is a forced tool: it cannot be combined with the client's own tools/tool_choice
        return "response_format"
    return None


def _tool_choice(body: dict) -> dict | None:
    tc = body.get("tool_choice")
    if tc is None:
        out = None
    elif tc == "auto":
        out = {"type": "auto"}
    elif tc == "none":
        out = {"type": "none"}
    elif tc == "required":
        out = {"type": "any"}
    else:
        out = {"type": "tool", "name": tc["function"]["name"]}
    if body.get("parallel_tool_calls") is False and (out is None or out["type"] != "none"):
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


def _messages(chat: list[dict]) -> tuple[list[str], list[dict]]:
    """OpenAI messages -> (system texts, Messages API turns)."""
    system: list[str] = []
    messages: list[dict] = []
    for mi, m in enumerate(chat):
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(content_text(m.get("content")))
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""),
                     "content": content_text(m.get("content"))}
            # consecutive tool results belong in one user turn
            if messages and messages[-1]["role"] == "user" and isinstance(messages[-1]["content"], list) \
                    and messages[-1]["content"] and messages[-1]["content"][0].get("type") == "tool_result":
                messages[-1]["content"].append(block)
            else:
                messages.append({"role": "user", "content": [block]})
        elif role == "assistant" and m.get("tool_calls"):
            blocks: list[dict] = []
            if content_text(m.get("content")):
                blocks.append({"type": "text", "text": content_text(m.get("content"))})
            for ti, tc in enumerate(m["tool_calls"]):
                fn = tc["function"]
                args = _tool_input(fn.get("arguments") or "{}",
                                   f"messages[{mi}].tool_calls[{ti}].function.arguments")
                blocks.append({"type": "tool_use", "id": tc.get("id") or "", "name": fn["name"], "input": args})
            messages.append({"role": "assistant", "content": blocks})
        else:
            messages.append({"role": "assistant" if role == "assistant" else "user",
                             "content": _blocks(m.get("content"))})
    return system, messages


def to_anthropic(body: dict, model: str) -> dict:
    check_chat_shapes(body)   # malformed shapes -> a 400 naming the field, not a crash below
    system, messages = _messages(body.get("messages", []))
    out: dict[str, Any] = {"model": model, "messages": messages,
                           "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
                           or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = "\n\n".join(system)
    for k in ("temperature", "top_p"):
        if body.get(k) is not None:
            out[k] = body[k]
    stops = stop_list(body.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    field = refuses(body)
    if field is not None:
        # the dispatcher skips such targets before calling; this guards direct callers
        raise invalid(field, "cannot be honoured by the Anthropic Messages API")
    tools = function_tools(body)
    if tools:
        out["tools"] = [{"name": f["name"], "description": f.get("description", ""),
                         "input_schema": f.get("parameters") or {"type": "object"}} for f in tools]
        tc = _tool_choice(body)
        if tc is not None:
            out["tool_choice"] = tc
    elif isinstance(body.get("tool_choice"), dict) or body.get("tool_choice") == "required":
        raise invalid("tool_choice", "needs 'tools'")
    jt = json_tool_name(body)
    if jt is not None:
        _, schema = json_mode(body)
        out["tools"] = [{"name": jt, "description": "Respond with a JSON object that is the complete answer.",
                         "input_schema": schema or {"type": "object"}}]
        out["tool_choice"] = {"type": "tool", "name": jt}
    return out


def usage_from_anthropic(u: dict | None) -> Usage | None:
    if not u:
        return None
    read = int(u.get("cache_read_input_tokens") or 0)
    write = int(u.get("cache_creation_input_tokens") or 0)
    return Usage(int(u.get("input_tokens") or 0) + read + write, int(u.get("output_tokens") or 0), read)


def from_anthropic(resp: dict, json_tool: str | None = None) -> dict:
    """`json_tool`: the forced JSON-mode tool (json_tool_name); its input becomes the content."""
    text, tool_calls = "", []
    stop = resp.get("stop_reason")
    for b in resp.get("content", []):
        if b.get("type") == "text":
            if json_tool is None:   # JSON mode: the tool input is the answer, not any preamble
                text += b.get("text", "")
        elif b.get("type") == "tool_use" and json_tool is not None and b.get("name") == json_tool:
            text += orjson.dumps(b.get("input", {})).decode()
            if stop == "tool_use":
                stop = "end_turn"
        elif b.get("type") == "tool_use":
            tool_calls.append({"id": b.get("id"), "type": "function",
                               "function": {"name": b.get("name"),
                                            "arguments": orjson.dumps(b.get("input", {})).decode()}})
    return chat_response(id=resp.get("id", ""), model=resp.get("model", ""), text=text,
                         finish_reason=STOP_REASONS.get(stop, "stop"),
                         usage=usage_from_anthropic(resp.get("usage")), tool_calls=tool_calls or None)


class StreamTranslator:
    """Anthropic stream events -> OpenAI chat chunks. `done` turns true at `message_stop` only."""

    def __init__(self, json_tool: str | None = None) -> None:
        self.id, self.model, self.created = "", "", int(time.time())
        self.usage = Usage()
        self.done = False
        self._tool_index: dict[int, int] = {}
        self._json_tool = json_tool            # JSON mode: this tool's input_json_delta is content
        self._json_blocks: set[int] = set()

    def feed(self, event: str, data: dict) -> list[dict]:
        t = data.get("type", event)
        mk = dict(id=self.id, model=self.model, created=self.created)
        if t == "message_start":
            msg = data.get("message", {})
            self.id, self.model = msg.get("id", ""), msg.get("model", "")
            self.usage = usage_from_anthropic(msg.get("usage")) or Usage()
            return [chat_chunk(id=self.id, model=self.model, created=self.created,
                               delta={"role": "assistant", "content": ""})]
        if t == "content_block_start":
            block = data.get("content_block", {})
            if block.get("type") == "tool_use" and self._json_tool is not None \
                    and block.get("name") == self._json_tool:
                self._json_blocks.add(data.get("index", 0))
                return []
            if block.get("type") == "tool_use":
                i = self._tool_index.setdefault(data.get("index", 0), len(self._tool_index))
                return [chat_chunk(**mk, delta={"tool_calls": [{"index": i, "id": block.get("id"),
                        "type": "function", "function": {"name": block.get("name"), "arguments": ""}}]})]
            if block.get("type") == "text" and block.get("text") and self._json_tool is None:
                return [chat_chunk(**mk, delta={"content": block["text"]})]
            return []
        if t == "content_block_delta":
            d = data.get("delta", {})
            if d.get("type") == "text_delta":
                if self._json_tool is not None:
                    return []    # JSON mode: only the forced tool's input is the answer
                return [chat_chunk(**mk, delta={"content": d.get("text", "")})]
            if d.get("type") == "input_json_delta" and data.get("index", 0) in self._json_blocks:
                pj = d.get("partial_json", "")
                return [chat_chunk(**mk, delta={"content": pj})] if pj else []
            if d.get("type") == "input_json_delta":
                i = self._tool_index.get(data.get("index", 0), 0)
                return [chat_chunk(**mk, delta={"tool_calls": [{"index": i, "function": {
                    "arguments": d.get("partial_json", "")}}]})]
            return []
        if t == "message_delta":
            u = data.get("usage") or {}
            if "output_tokens" in u:
                self.usage.completion_tokens = int(u["output_tokens"])
            # some fields may be re-reported at the end; take the larger view
            if u.get("input_tokens") is not None:
                full = usage_from_anthropic({**u, "output_tokens": self.usage.completion_tokens})
                if full and full.prompt_tokens > self.usage.prompt_tokens:
                    self.usage = full
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason == "tool_use" and self._json_blocks and not self._tool_index:
                reason = "end_turn"
            if reason:
                return [chat_chunk(**mk, delta={}, finish_reason=STOP_REASONS.get(reason, "stop"))]
            return []
        if t == "message_stop":
            self.done = True
            return [chat_chunk(**mk, usage=self.usage)]
        if t == "error":
            err = data.get("error", {})
            raise ValueError(err.get("message", "error") if isinstance(err, dict) else str(err))
        return []  # ping, content_block_stop


class AnthropicProvider(HttpProvider):
    endpoints = frozenset({CHAT, COMPLETIONS})

    def auth_headers(self) -> dict[str, str]:
        h = {"anthropic-version": API_VERSION}
        if self._secret:
            h["x-api-key"] = self._secret
        return h

    def refuses(self, endpoint: str, body: dict) -> str | None:
        return refuses(chat_body_from_completion(body) if endpoint == COMPLETIONS else body)

    async def call(self, endpoint: str, body: dict, target) -> Response:
        if endpoint not in self.endpoints:
            raise unsupported(self.name, endpoint)
        chat = chat_body_from_completion(body) if endpoint == COMPLETIONS else body
        obj, _ = await self.post_json(self.base_url + "/messages", to_anthropic(chat, target.model), target)
        out = from_anthropic(obj, json_tool_name(chat))
        usage = Usage.from_openai(out.get("usage"))
        if endpoint == COMPLETIONS:
            out = completion_from_chat(out)
        return Response(out, usage)

    async def stream(self, endpoint: str, body: dict, target) -> AsyncIterator[dict]:
        if endpoint not in self.endpoints:
            raise unsupported(self.name, endpoint)
        chat = chat_body_from_completion(body) if endpoint == COMPLETIONS else body
        payload = to_anthropic(chat, target.model)
        payload["stream"] = True
        resp = await self.post(self.base_url + "/messages", payload, target, stream=True)
        tr = StreamTranslator(json_tool_name(chat))
        async for ev in self.sse_events(resp):
            if not ev.data:
                continue
            try:
                chunks = tr.feed(ev.event, orjson.loads(ev.data))
            except ValueError as e:
                raise broken(self.name, f"error event mid-stream: {scrub(str(e), self._secret)[:200]}") from None
            for c in chunks:
                yield completion_chunk_from_chat(c) if endpoint == COMPLETIONS else c
            if tr.done:
                return
        raise broken(self.name, "stream ended without message_stop")
