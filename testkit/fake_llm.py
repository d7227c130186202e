"""A loopback stand-in for the LLM app (`serve_apps.llm`) speaking its handle protocol.

Deployed as a real Serve app; the gateway's `serve` provider calls it through a DeploymentHandle
exactly as it calls the vLLM app: `generate(request) -> dict` and `generate_stream(request)`
yielding OpenAI chunks, the last one with `usage` (docs/INTERFACES.md). Model `<name>-cut` makes
the stream raise after two tokens (an engine dying mid-generation).

LoRA adapters: `FakeLLM(app=..., adapters=[...])` serves those adapters and publishes them on the
readiness board as the LLM app's router does (`note_adapters`). A request for one
(HandleRequest.adapter) is answered "Hello from <adapter>!"; an adapter it does not serve gets
the app's 404 (`model_not_found`); one whose name ends in `-down` fails like a dead engine.
"""
from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from gateway.llm_protocol import CHAT, HandleRequest, model_not_found

PIECES = ["Hello", " from", " local", "!"]


class FakeLLM:
    def __init__(self, app: str | None = None, adapters: list[str] | None = None) -> None:
        self.calls: list[dict] = []
        self.adapters = frozenset(adapters or ())
        if app is not None and adapters is not None:
            import ray

            from gateway.readiness import get_or_create_board
            ray.get(get_or_create_board().note_adapters.remote(app, sorted(self.adapters)))

    def _answer(self, request: dict) -> tuple[str, list[str], dict, bool]:
        self.calls.append(request)
        req = HandleRequest.from_wire(request)  # the app's own reader: a malformed request fails here
        body = req.body
        pieces = PIECES
        if req.adapter is not None:
            if req.adapter not in self.adapters:
                raise model_not_found(req.adapter)
            if req.adapter.endswith("-down"):
                raise RuntimeError(f"adapter {req.adapter!r}: engine died")
            pieces = ["Hello", " from", f" {req.adapter}", "!"]
        mt = body.get("max_tokens") or len(pieces)
        pieces = pieces[:mt]
        if req.endpoint == CHAT:
            words = " ".join(str(m.get("content") or "") for m in body.get("messages", []))
        else:
            words = str(body.get("prompt", ""))
        usage = {"prompt_tokens": 3 + len(words.split()), "completion_tokens": len(pieces),
                 "total_tokens": 3 + len(words.split()) + len(pieces)}
        return body.get("model", ""), pieces, usage, req.endpoint == CHAT

    async def generate(self, request: dict) -> dict:
        model, pieces, usage, chat = self._answer(request)
        finish = "stop" if pieces[-1:] == ["!"] else "length"
        choice = ({"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": finish}
                  if chat else {"index": 0, "text": "".join(pieces), "finish_reason": finish, "logprobs": None})
        return {"id": "local-" + uuid.uuid4().hex[:12], "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}

    async def generate_stream(self, request: dict) -> AsyncIterator[dict]:
        model, pieces, usage, chat = self._answer(request)
        cid, created = "local-" + uuid.uuid4().hex[:12], int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None = None, role: bool = False) -> dict:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                c = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                c = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {"id": cid, "object": obj, "created": created, "model": model, "choices": [c]}

        if chat:
            yield chunk(None, role=True)
        for i, p in enumerate(pieces):
            if model.endswith("-cut") and i == 2:
                raise RuntimeError("engine died mid-generation")
            yield chunk(p)
        last = chunk(None, "stop" if pieces[-1:] == ["!"] else "length")
        last["usage"] = usage
        yield last

    def seen(self) -> list[dict]:
        return self.calls
