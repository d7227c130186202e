"""Google Gemini generateContent / streamGenerateContent / batchEmbedContents <-> OpenAI.

Gemini's stream (`alt=sse`) has no [DONE]: it just ends. A stream counts as finished only once a
candidate carried a `finishReason`; EOF before that is a cut stream.
Usage: `promptTokenCount` includes cached tokens (`cachedContentTokenCount`), like OpenAI's;
thinking tokens (`thoughtsTokenCount`) are billed as output.
"""
from __future__ import annotations

import time
from typing import Any, AsyncIterator

import orjson

from gateway.providers.base import CHAT, COMPLETIONS, EMBEDDINGS, Response, Usage
from gateway.providers.http import HttpProvider, broken
from gateway.providers.gemini_schema import Unexpressible, to_gemini_schema
from gateway.providers.translate import (InvalidRequest, chat_body_from_completion, chat_chunk,
                                         chat_response, check_chat_shapes, common_refusal,
                                         completion_chunk_from_chat, completion_from_chat, content_text,
                                         function_tools, invalid, json_mode, new_id, stop_list)

FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
          "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
          "MALFORMED_FUNCTION_CALL": "stop", "OTHER": "stop", "LANGUAGE": "stop"}


def _parts(content: Any) -> list[dict]:
    if isinstance(content, str) or content is None:
        return [{"text": content or ""}]
    parts = []
    for p in content:
        if p.get("type") == "text":
            parts.append({"text": p.get("text", "")})
        elif p.get("type") == "image_url":
            url = (p.get("image_url") or {}).get("url", "")
            if url.startswith("data:"):
                head, _, data = url.partition(",")
                parts.append({"inlineData": {"mimeType": head[5:].split(";")[0], "data": data}})
            else:
                parts.append({"fileData": {"fileUri": url}})
    return parts


def _declaration(fn: dict, k: int) -> dict:
    d: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        d["description"] = fn["description"]
    params = fn.get("parameters")
    if params:
        conv = to_gemini_schema(params)
        # an OBJECT with no properties is refused by Gemini; a no-argument function has none
        if conv.get("properties") or conv.get("type") != "OBJECT":
            d["parameters"] = conv
    return d


def refuses(body: dict) -> str | None:
    """The field a Gemini target cannot honour for `body`, or None (see Provider.refuses)."""
    check_chat_shapes(body)
    field = common_refusal(body)
    if field is not None:
        return field
    tools = function_tools(body)
    try:
        for k, fn in enumerate(tools):
            if fn.get("parameters"):
                to_gemini_schema(fn["parameters"])
    except Unexpressible:
        return "tools"
    jm = json_mode(body)
    if jm is not None:
        if tools:
            return "response_format"   # Gemini rejects JSON mime type together with function calling
        if jm[1] is not None:
            try:
                to_gemini_schema(jm[1])
            except Unexpressible:
                return "response_format"
    if tools and body.get("parallel_tool_calls") is False:
        return "parallel_tool_calls"   # Gemini has no switch for one call per turn
    return None


def _args(raw: Any, param: str) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        obj = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        raise invalid(param, "must be a JSON object encoded as a string") from None
    if not isinstance(obj, dict):
        raise invalid(param, "must be a JSON object encoded as a string")
    return obj


def _tool_response(content: Any) -> dict:
    text = content_text(content)
    try:
        val = orjson.loads(text)
    except orjson.JSONDecodeError:
        val = text
    return val if isinstance(val, dict) else {"content": val}


def to_gemini(body: dict) -> dict:
    check_chat_shapes(body)   # malformed shapes -> a 400 naming the field, not a crash below
    field = refuses(body)
    if field is not None:
        # the dispatcher skips such targets before calling; this guards direct callers
        raise invalid(field, "cannot be honoured by the Gemini API")
    system, contents = _contents(body.get("messages", []))
    out: dict[str, Any] = {"contents": contents}
    out.update(_tools(body))
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    gen = _generation_config(body)
    if gen:
        out["generationConfig"] = gen
    return out


def _contents(messages: list[dict]) -> tuple[list[str], list[dict]]:
    """OpenAI messages -> (system texts, Gemini contents)."""
    system: list[str] = []
    contents: list[dict] = []
    call_names: dict[str, str] = {}   # tool_call_id -> function name (functionResponse needs the name)
    for mi, m in enumerate(messages):
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(content_text(m.get("content")))
        elif role == "tool":
            _add_tool_response(contents, m, mi, call_names)
        elif role == "assistant" and m.get("tool_calls"):
            contents.append(_model_tool_calls(m, mi, call_names))
        else:
            contents.append({"role": "model" if role == "assistant" else "user", "parts": _parts(m.get("content"))})
    return system, contents


def _add_tool_response(contents: list[dict], m: dict, mi: int, call_names: dict[str, str]) -> None:
    name = call_names.get(m["tool_call_id"])
    if name is None:
        raise invalid(f"messages[{mi}].tool_call_id", "must be the id of an earlier assistant tool call")
    part = {"functionResponse": {"name": name, "response": _tool_response(m.get("content"))}}
    prev = contents[-1] if contents else None
    if prev is not None and prev["role"] == "user" and prev["parts"] \
            and "functionResponse" in prev["parts"][0]:
        prev["parts"].append(part)   # the answers to one turn's calls go in one content
    else:
        contents.append({"role": "user", "parts": [part]})


def _model_tool_calls(m: dict, mi: int, call_names: dict[str, str]) -> dict:
    """An assistant turn with tool calls -> a model content of functionCall parts (recording
    each call's id -> name for the tool responses that follow)."""
    parts = [{"text": content_text(m.get("content"))}] if content_text(m.get("content")) else []
    for ti, tc in enumerate(m["tool_calls"]):
        fn = tc["function"]
        if tc.get("id"):
            call_names[tc["id"]] = fn["name"]
        parts.append({"functionCall": {"name": fn["name"], "args": _args(
            fn.get("arguments"), f"messages[{mi}].tool_calls[{ti}].function.arguments")}})
    return {"role": "model", "parts": parts}


def _tools(body: dict) -> dict:
    """`tools` and `toolConfig` of the request (empty without function tools)."""
    tools = function_tools(body)
    if not tools:
        if isinstance(body.get("tool_choice"), dict) or body.get("tool_choice") == "required":
            raise invalid("tool_choice", "needs 'tools'")
        return {}
    out: dict[str, Any] = {"tools": [{"functionDeclarations": [_declaration(fn, k) for k, fn in enumerate(tools)]}]}
    tc = body.get("tool_choice")
    if tc is not None:
        if isinstance(tc, dict):
            cfg = {"mode": "ANY", "allowedFunctionNames": [tc["function"]["name"]]}
        else:
            cfg = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[tc]}
        out["toolConfig"] = {"functionCallingConfig": cfg}
    return out


def _generation_config(body: dict) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    mt = body.get("max_completion_tokens") or body.get("max_tokens")
    if mt is not None:
        gen["maxOutputTokens"] = mt
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"),
                     ("seed", "seed"), ("presence_penalty", "presencePenalty"),
                     ("frequency_penalty", "frequencyPenalty")):
        if body.get(src) is not None:
            gen[dst] = body[src]
    stops = stop_list(body.get("stop"))
    if stops:
        gen["stopSequences"] = stops
    jm = json_mode(body)
    if jm is not None:
        gen["responseMimeType"] = "application/json"
        if jm[1] is not None:
            gen["responseSchema"] = to_gemini_schema(jm[1])
    return gen


def usage_from_gemini(u: dict | None) -> Usage | None:
    if not u:
        return None
    out = int(u.get("candidatesTokenCount") or 0) + int(u.get("thoughtsTokenCount") or 0)
    return Usage(int(u.get("promptTokenCount") or 0), out, int(u.get("cachedContentTokenCount") or 0))


def _text(cand: dict) -> str:
    return "".join(p.get("text", "") for p in (cand.get("content") or {}).get("parts", []) if not p.get("thought"))


def _calls(cand: dict) -> list[dict]:
    """The candidate's functionCall parts as OpenAI tool_calls (Gemini ids are optional)."""
    out = []
    for p in (cand.get("content") or {}).get("parts", []):
        fc = p.get("functionCall")
        if isinstance(fc, dict):
            out.append({"id": fc.get("id") or new_id("call"), "type": "function",
                        "function": {"name": fc.get("name", ""),
                                     "arguments": orjson.dumps(fc.get("args") or {}).decode()}})
    return out


def _finish(cand: dict, has_calls: bool) -> str:
    f = FINISH.get(cand.get("finishReason"), "stop")
    return "tool_calls" if has_calls and f == "stop" else f


def from_gemini(resp: dict, model: str) -> dict:
    cands = resp.get("candidates") or []
    usage = usage_from_gemini(resp.get("usageMetadata"))
    calls0 = _calls(cands[0]) if cands else []
    out = chat_response(id=resp.get("responseId") or new_id("chatcmpl"), model=resp.get("modelVersion") or model,
                        text=_text(cands[0]) if cands else "",
                        finish_reason=_finish(cands[0], bool(calls0)) if cands else "stop",
                        usage=usage, tool_calls=calls0 or None)
    for i, c in enumerate(cands[1:], start=1):
        calls = _calls(c)
        msg: dict[str, Any] = {"role": "assistant", "content": _text(c) or (None if calls else "")}
        if calls:
            msg["tool_calls"] = calls
        out["choices"].append({"index": i, "message": msg, "logprobs": None,
                               "finish_reason": _finish(c, bool(calls))})
    return out


class StreamTranslator:
    def __init__(self, model: str) -> None:
        self.id, self.model, self.created = new_id("chatcmpl"), model, int(time.time())
        self.usage: Usage | None = None
        self.done = False
        self._started = False
        self._ncalls = 0

    def feed(self, data: dict) -> list[dict]:
        out: list[dict] = []
        mk = dict(id=self.id, model=self.model, created=self.created)
        if data.get("error"):
            err = data["error"]
            raise ValueError(err.get("message", "error") if isinstance(err, dict) else str(err))
        if not self._started:
            self._started = True
            out.append(chat_chunk(**mk, delta={"role": "assistant", "content": ""}))
        if data.get("usageMetadata"):
            self.usage = usage_from_gemini(data["usageMetadata"])
        for cand in data.get("candidates") or []:
            text = _text(cand)
            if text:
                out.append(chat_chunk(**mk, delta={"content": text}))
            for tc in _calls(cand):
                # Gemini streams each functionCall whole: one delta with all its arguments
                out.append(chat_chunk(**mk, delta={"tool_calls": [{"index": self._ncalls, **tc}]}))
                self._ncalls += 1
            if cand.get("finishReason"):
                self.done = True
                out.append(chat_chunk(**mk, delta={}, finish_reason=_finish(cand, self._ncalls > 0)))
        return out

    def final(self) -> dict | None:
        return chat_chunk(id=self.id, model=self.model, created=self.created, usage=self.usage) \
            if self.usage is not None else None


class GeminiProvider(HttpProvider):
    endpoints = frozenset({CHAT, COMPLETIONS, EMBEDDINGS})

    def auth_headers(self) -> dict[str, str]:
        # header, not the `?key=` query parameter: URLs end up in access logs
        return {"x-goog-api-key": self._secret} if self._secret else {}

    def _url(self, model: str, method: str) -> str:
        return f"{self.base_url}/models/{model}:{method}"

    def refuses(self, endpoint: str, body: dict) -> str | None:
        if endpoint == EMBEDDINGS:
            return None
        return refuses(chat_body_from_completion(body) if endpoint == COMPLETIONS else body)

    async def call(self, endpoint: str, body: dict, target) -> Response:
        if endpoint == EMBEDDINGS:
            return await self._embed(body, target)
        chat = chat_body_from_completion(body) if endpoint == COMPLETIONS else body
        obj, _ = await self.post_json(self._url(target.model, "generateContent"), to_gemini(chat), target)
        out = from_gemini(obj, target.model)
        usage = Usage.from_openai(out.get("usage"))
        if endpoint == COMPLETIONS:
            out = completion_from_chat(out)
        return Response(out, usage)

    async def _embed(self, body: dict, target) -> Response:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not all(isinstance(t, str) for t in texts):
            # the request's fault, not the upstream's: a 400, not a failure that falls back and
            # counts against this target's breaker
            raise InvalidRequest("Gemini embeddings take text input only (not token ids)", param="input",
                                 code="unsupported_value")
        payload = {"requests": [{"model": f"models/{target.model}", "content": {"parts": [{"text": t}]}}
                                for t in texts]}
        obj, _ = await self.post_json(self._url(target.model, "batchEmbedContents"), payload, target)
        data = [{"object": "embedding", "index": i, "embedding": e.get("values", [])}
                for i, e in enumerate(obj.get("embeddings", []))]
        # batchEmbedContents reports no token counts: the dispatcher counts them locally
        return Response({"object": "list", "data": data, "model": target.model}, None)

    async def stream(self, endpoint: str, body: dict, target) -> AsyncIterator[dict]:
        if endpoint == EMBEDDINGS:
            raise broken(self.name, "embeddings cannot stream")
        chat = chat_body_from_completion(body) if endpoint == COMPLETIONS else body
        resp = await self.post(self._url(target.model, "streamGenerateContent") + "?alt=sse", to_gemini(chat),
                               target, stream=True)
        tr = StreamTranslator(target.model)
        async for ev in self.sse_events(resp):
            if not ev.data:
                continue
            try:
                chunks = tr.feed(orjson.loads(ev.data))
            except ValueError as e:
                raise broken(self.name, f"error mid-stream: {str(e)[:200]}") from None
            for c in chunks:
                yield completion_chunk_from_chat(c) if endpoint == COMPLETIONS else c
        if not tr.done:
            raise broken(self.name, "stream ended before a finishReason")
        fin = tr.final()
        if fin is not None:
            yield completion_chunk_from_chat(fin) if endpoint == COMPLETIONS else fin
