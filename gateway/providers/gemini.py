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
from gateway.providers.translate import (InvalidRequest, chat_body_from_completion, chat_chunk,
                                         chat_response, check_chat_shapes, completion_chunk_from_chat,
                                         completion_from_chat, content_text, new_id, stop_list)

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


def to_gemini(body: dict) -> dict:
    check_chat_shapes(body)   # malformed shapes -> a 400 naming the field, not a crash below
    system: list[str] = []
    contents: list[dict] = []
    for m in body.get("messages", []):
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(content_text(m.get("content")))
            continue
        contents.append({"role": "model" if role == "assistant" else "user", "parts": _parts(m.get("content"))})
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
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
    if gen:
        out["generationConfig"] = gen
    return out


def usage_from_gemini(u: dict | None) -> Usage | None:
    if not u:
        return None
    out = int(u.get("candidatesTokenCount") or 0) + int(u.get("thoughtsTokenCount") or 0)
    return Usage(int(u.get("promptTokenCount") or 0), out, int(u.get("cachedContentTokenCount") or 0))


def _text(cand: dict) -> str:
    return "".join(p.get("text", "") for p in (cand.get("content") or {}).get("parts", []) if not p.get("thought"))


def from_gemini(resp: dict, model: str) -> dict:
    cands = resp.get("candidates") or []
    usage = usage_from_gemini(resp.get("usageMetadata"))
    out = chat_response(id=resp.get("responseId") or new_id("chatcmpl"), model=resp.get("modelVersion") or model,
                        text=_text(cands[0]) if cands else "",
                        finish_reason=FINISH.get(cands[0].get("finishReason"), "stop") if cands else "stop",
                        usage=usage)
    for i, c in enumerate(cands[1:], start=1):
        out["choices"].append({"index": i, "message": {"role": "assistant", "content": _text(c)},
                               "logprobs": None, "finish_reason": FINISH.get(c.get("finishReason"), "stop")})
    return out


class StreamTranslator:
    def __init__(self, model: str) -> None:
        self.id, self.model, self.created = new_id("chatcmpl"), model, int(time.time())
        self.usage: Usage | None = None
        self.done = False
        self._started = False

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
            if cand.get("finishReason"):
                self.done = True
                out.append(chat_chunk(**mk, delta={}, finish_reason=FINISH.get(cand["finishReason"], "stop")))
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
