"""OpenAI and OpenAI-compatible upstreams: passed through.

Non-streamed responses are relayed byte for byte (parsed only to read `usage`). Streams always ask
upstream for usage (`stream_options.include_usage`), so streamed spend is never logged as $0; the
dispatcher strips that final usage chunk again when the client did not ask for it.
"""
from __future__ import annotations

from typing import AsyncIterator

import orjson

from gateway.providers.base import CHAT, COMPLETIONS, EMBEDDINGS, Response, Usage, scrub
from gateway.providers.http import HttpProvider, broken

_PATHS = {CHAT: "/chat/completions", COMPLETIONS: "/completions", EMBEDDINGS: "/embeddings"}


class OpenAIProvider(HttpProvider):
    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._secret}"} if self._secret else {}

    def _payload(self, body: dict, target, *, stream: bool) -> dict:
        payload = dict(body)
        payload["model"] = target.model
        if stream:
            payload["stream"] = True
            opts = dict(payload.get("stream_options") or {})
            opts["include_usage"] = True
            payload["stream_options"] = opts
        else:
            payload.pop("stream_options", None)
            payload.pop("stream", None)
        return payload

    async def call(self, endpoint: str, body: dict, target) -> Response:
        obj, raw = await self.post_json(self.base_url + _PATHS[endpoint],
                                        self._payload(body, target, stream=False), target)
        return Response(obj, Usage.from_openai(obj.get("usage")), raw)

    async def stream(self, endpoint: str, body: dict, target) -> AsyncIterator[dict]:
        resp = await self.post(self.base_url + _PATHS[endpoint], self._payload(body, target, stream=True),
                               target, stream=True)
        async for ev in self.sse_events(resp):
            data = ev.data
            if data == "[DONE]":
                return
            if not data:
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise broken(self.name, "invalid JSON in stream") from None
            if "error" in chunk:
                err = chunk["error"]
                msg = err.get("message", "error") if isinstance(err, dict) else str(err)
                raise broken(self.name, f"error event mid-stream: {scrub(msg, self._secret)[:200]}")
            yield chunk
        raise broken(self.name, "stream ended without [DONE]")
