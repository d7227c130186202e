"""Loopback fake upstreams speaking the real OpenAI, Anthropic and Gemini wire formats.

One aiohttp server serves all three APIs (their paths do not collide):
  OpenAI     POST /v1/chat/completions, /v1/completions, /v1/embeddings     (SSE + [DONE])
  Anthropic  POST /v1/messages                                             (event: ... SSE)
  Gemini     POST /v1beta/models/{model}:generateContent | :streamGenerateContent?alt=sse
             | :batchEmbedContents

Behaviour is chosen by the upstream model name, so one server covers every test:
  <name>            normal answer                <name>-500    500 with the provider's error body
  <name>-429        429 + Retry-After: 1         <name>-hang   never answers
  <name>-cut        stream sends 2 tokens, then the connection drops (no terminal marker)
  <name>-stall      stream sends 2 tokens, then goes silent
  <name>-flakyN     the first N requests for this model get 500, later ones succeed
  <name>-d50        adds 50 ms latency before answering (any number)
  <name>-oddusage   OpenAI API only: a normal answer whose `usage` is garbage (negative and
                    non-numeric counts), streamed or not
Tools and JSON mode: testkit/fake_wire.py (tool_use / functionCall answers, 400 on bad shapes). The
answer is deterministic: 5 output pieces ("Hello", " from", " fake", " <api>", "!"), usage
prompt_tokens = 7 + words in the prompt, cached_tokens = 2. 500 bodies echo the received key
(as real providers' 401s do), which is how tests prove the gateway never relays a secret.
Run standalone (bench): `python -m testkit.fake_providers --port 9100 [--delay-ms 50]`.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from testkit.fake_wire import anthropic_shape_error, anthropic_tool_frames, anthropic_tool_use, gemini_call, gemini_shape_error, sample  # noqa: E501

PIECES = ["Hello", " from", " fake", " {api}", "!"]
CACHED = 2
_MODE_RE = re.compile(r"-(500|429|hang|cut|stall|oddusage|flaky\d+|d\d+)$")
ODD_USAGE = {"prompt_tokens": -3, "completion_tokens": "n/a", "total_tokens": None,
             "prompt_tokens_details": "none"}


def parse_model(model: str) -> tuple[str, float, int]:
    """(mode, delay_s, flaky_n) from a model name; several suffixes may stack: `m-d50-cut`."""
    mode, delay, flaky = "ok", 0.0, 0
    while True:
        m = _MODE_RE.search(model)
        if not m:
            return mode, delay, flaky
        tok = m.group(1)
        if tok.startswith("d"):
            delay = int(tok[1:]) / 1000.0
        elif tok.startswith("flaky"):
            mode, flaky = "flaky", int(tok[5:])
        else:
            mode = tok
        model = model[:m.start()]


def _prompt_tokens(words: str) -> int:
    return 7 + len(words.split())


@dataclass
class FakeState:
    delay_s: float = 0.0
    counts: Counter = field(default_factory=Counter)        # (api, model) -> requests
    requests: deque = field(default_factory=lambda: deque(maxlen=2000))   # the latest bodies/headers seen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, api: str, model: str, request: web.Request, body: dict) -> int:
        with self.lock:
            self.counts[(api, model)] += 1
            h = request.headers
            self.requests.append({"api": api, "model": model, "path": request.path, "body": body,
                                  "ts": time.monotonic(), "traceparent": h.get("traceparent"),
                                  "auth": h.get("authorization") or h.get("x-api-key") or h.get("x-goog-api-key")})
            return self.counts[(api, model)]

    def count(self, api: str, model: str) -> int:
        with self.lock:
            return self.counts[(api, model)]

    def seen_requests(self, api: str, model: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["api"] == api and r["model"] == model]

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.requests.clear()


def _key_of(request: web.Request) -> str:
    return (request.headers.get("authorization", "").removeprefix("Bearer ")
            or request.headers.get("x-api-key", "") or request.headers.get("x-goog-api-key", ""))


def _error(api: str, status: int, request: web.Request) -> web.Response:
    key = _key_of(request)
    headers = {"retry-after": "1"} if status == 429 else {}
    if api == "openai":
        typ = "requests" if status == 429 else "server_error"
        msg = ("Rate limit reached for requests" if status == 429
               else f"The server had an error while processing your request (key {key})")
        body = {"error": {"message": msg, "type": typ, "param": None,
                          "code": "rate_limit_exceeded" if status == 429 else None}}
    elif api == "anthropic":
        typ = "rate_limit_error" if status == 429 else "api_error"
        msg = "Number of requests has exceeded your rate limit" if status == 429 else f"Internal server error ({key})"
        body = {"type": "error", "error": {"type": typ, "message": msg}}
    else:
        st = "RESOURCE_EXHAUSTED" if status == 429 else "INTERNAL"
        msg = "Resource has been exhausted (e.g. check quota)." if status == 429 else f"Internal error ({key})"
        body = {"error": {"code": status, "message": msg, "status": st}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


class FakeProviders:
    def __init__(self, delay_ms: float = 0.0):
        self.state = FakeState(delay_s=delay_ms / 1000.0)
        self.app = web.Application(client_max_size=8 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self._openai_chat)
        self.app.router.add_post("/v1/completions", self._openai_completions)
        self.app.router.add_post("/v1/embeddings", self._openai_embeddings)
        self.app.router.add_post("/v1/messages", self._anthropic)
        self.app.router.add_post("/v1beta/models/{call}", self._gemini)
        self.app.router.add_get("/__stats", self._stats)

    # ---- shared behaviour --------------------------------------------------------------
    async def _pre(self, api: str, model: str, request: web.Request, body: dict) -> tuple[str, web.Response | None]:
        """Counts the request, applies latency and failure modes; returns (mode, early response)."""
        n = self.state.seen(api, model, request, body)
        mode, delay, flaky = parse_model(model)
        delay = delay or self.state.delay_s
        if delay:
            await asyncio.sleep(delay)
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "500" or (mode == "flaky" and n <= flaky):
            return mode, _error(api, 500, request)
        if mode == "429":
            return mode, _error(api, 429, request)
        return mode, None

    @staticmethod
    def _pieces(api: str, max_tokens: int | None) -> tuple[list[str], str]:
        pieces = [p.format(api=api) for p in PIECES]
        if max_tokens is not None and max_tokens < len(pieces):
            return pieces[:max_tokens], "length"
        return pieces, "stop"

    async def _stream(self, request: web.Request, frames, mode: str, headers: dict | None = None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache",
                                           **(headers or {})})
        await resp.prepare(request)
        for i, frame in enumerate(frames):
            if mode in ("cut", "stall") and i == 3:   # role/start frame + 2 tokens went out
                if mode == "stall":
                    await asyncio.sleep(3600)
                # drop the connection mid-body: no terminal chunk, no [DONE]
                request.transport.close()
                return resp
            await resp.write(frame)
        await resp.write_eof()
        return resp

    # ---- OpenAI -------------------------------------------------------------------------
    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=True)

    async def _openai_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=False)

    async def _openai(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model = body.get("model", "")
        mode, early = await self._pre("openai", model, request, body)
        if early is not None:
            return early
        if chat:
            words = " ".join(str(m.get("content") or "") for m in body.get("messages", []))
        else:
            p = body.get("prompt", "")
            words = p if isinstance(p, str) else " ".join(map(str, p))
        pieces, finish = self._pieces("openai", body.get("max_tokens") or body.get("max_completion_tokens"))
        usage = {"prompt_tokens": _prompt_tokens(words), "completion_tokens": len(pieces),
                 "total_tokens": _prompt_tokens(words) + len(pieces),
                 "prompt_tokens_details": {"cached_tokens": CACHED}}
        if mode == "oddusage":
            usage = dict(ODD_USAGE)
        cid, created = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:20], int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "logprobs": None,
                       "finish_reason": finish} if chat else
                      {"index": 0, "text": "".join(pieces), "logprobs": None, "finish_reason": finish})
            out = {"id": cid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage}
            return web.Response(body=orjson.dumps(out), content_type="application/json")
        cobj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta_or_text, finish_reason=None):
            c = ({"index": 0, "delta": delta_or_text, "logprobs": None, "finish_reason": finish_reason} if chat else
                 {"index": 0, "text": delta_or_text, "logprobs": None, "finish_reason": finish_reason})
            return b"data: " + orjson.dumps({"id": cid, "object": cobj, "created": created, "model": model,
                                             "choices": [c]}) + b"\n\n"

        frames = [chunk({"role": "assistant", "content": ""}) if chat else chunk("")]
        frames += [chunk({"content": p} if chat else p) for p in pieces]
        frames.append(chunk({} if chat else "", finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append(b"data: " + orjson.dumps({"id": cid, "object": cobj, "created": created, "model": model,
                                                    "choices": [], "usage": usage}) + b"\n\n")
        frames.append(b"data: [DONE]\n\n")
        return await self._stream(request, frames, mode)

    async def _openai_embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        model = body.get("model", "")
        _, early = await self._pre("openai", model, request, body)
        if early is not None:
            return early
        inp = body.get("input")
        items = [inp] if isinstance(inp, str) else list(inp)
        data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1)] * 8} for i in range(len(items))]
        toks = sum(_prompt_tokens(str(x)) for x in items)
        return web.json_response({"object": "list", "data": data, "model": model,
                                  "usage": {"prompt_tokens": toks, "total_tokens": toks}})

    # ---- Anthropic ----------------------------------------------------------------------
    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model = body.get("model", "")
        if request.headers.get("anthropic-version") is None or "max_tokens" not in body:
            return web.Response(status=400, content_type="application/json", body=orjson.dumps(
                {"type": "error", "error": {"type": "invalid_request_error",
                                            "message": "anthropic-version header and max_tokens are required"}}))
        mode, early = await self._pre("anthropic", model, request, body)
        if early is not None:
            return early
        if (err := anthropic_shape_error(body)):
            return web.json_response({"type": "error", "error": {"type": "invalid_request_error", "message": err}}, status=400)
        words = " ".join(m["content"] if isinstance(m["content"], str) else
                         " ".join(b.get("text", "") for b in m["content"]) for m in body.get("messages", []))
        words += " " + (body.get("system") or "")
        pieces, finish = self._pieces("anthropic", body.get("max_tokens"))
        stop = "end_turn" if finish == "stop" else "max_tokens"
        total_in = _prompt_tokens(words)
        # Anthropic splits prompt tokens: input_tokens excludes cache reads
        usage = {"input_tokens": total_in - CACHED, "output_tokens": len(pieces),
                 "cache_read_input_tokens": CACHED, "cache_creation_input_tokens": 0}
        mid = "msg_" + uuid.uuid4().hex[:20]
        tool_use = anthropic_tool_use(body)
        stop = "tool_use" if tool_use is not None else stop
        if not body.get("stream"):
            content = [{"type": "text", "text": "".join(pieces)}] if tool_use is None else [tool_use]
            return web.json_response({"id": mid, "type": "message", "role": "assistant", "model": model,
                                      "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage})

        def ev(name, data):
            return f"event: {name}\n".encode() + b"data: " + orjson.dumps({"type": name, **data}) + b"\n\n"

        if tool_use is not None:
            frames = anthropic_tool_frames(ev, mid, model, usage, tool_use, len(pieces))
            return await self._stream(request, frames, mode)

        frames = [ev("message_start", {"message": {"id": mid, "type": "message", "role": "assistant", "model": model,
                                                   "content": [], "stop_reason": None, "stop_sequence": None,
                                                   "usage": {**usage, "output_tokens": 1}}}),
                  ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
        frames += [ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in pieces]
        frames.insert(3, b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
        frames += [ev("content_block_stop", {"index": 0}),
                   ev("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                        "usage": {"output_tokens": len(pieces)}}),
                   ev("message_stop", {})]
        return await self._stream(request, frames, mode)

    # ---- Gemini -------------------------------------------------------------------------
    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        body = orjson.loads(await request.read())
        mode, early = await self._pre("gemini", model, request, body)
        if early is not None:
            return early
        if method == "batchEmbedContents":
            return web.json_response({"embeddings": [{"values": [0.2] * 8} for _ in body.get("requests", [])]})
        if (err := gemini_shape_error(body)):
            return web.json_response({"error": {"code": 400, "message": err, "status": "INVALID_ARGUMENT"}}, status=400)
        words = " ".join(p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", [])) + " "
        words += " ".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts", []))
        pieces, finish = self._pieces("gemini", (body.get("generationConfig") or {}).get("maxOutputTokens"))
        reason = "STOP" if finish == "stop" else "MAX_TOKENS"
        usage = {"promptTokenCount": _prompt_tokens(words), "candidatesTokenCount": len(pieces),
                 "totalTokenCount": _prompt_tokens(words) + len(pieces), "cachedContentTokenCount": CACHED}
        rid = uuid.uuid4().hex[:16]
        gen = body.get("generationConfig") or {}
        call = gemini_call(body)
        if call is None and gen.get("responseMimeType") == "application/json":   # JSON mode: 2 pieces
            js = orjson.dumps(sample(gen["responseSchema"]) if gen.get("responseSchema") else {"a": 1}).decode()
            pieces = [js[:len(js) // 2], js[len(js) // 2:]]
        if method == "generateContent":
            parts = [call] if call is not None else [{"text": "".join(pieces)}]
            return web.json_response({"candidates": [{"content": {"parts": parts, "role": "model"},
                                                      "finishReason": reason, "index": 0}],
                                      "usageMetadata": usage, "modelVersion": model, "responseId": rid})
        if call is not None and method == "streamGenerateContent":
            c = {"content": {"parts": [call], "role": "model"}, "finishReason": reason, "index": 0}
            return await self._stream(request, [b"data: " + orjson.dumps({"candidates": [c], "usageMetadata": usage})
                                                + b"\r\n\r\n"], mode)
        if method != "streamGenerateContent" or request.query.get("alt") != "sse":
            return web.json_response({"error": {"code": 404, "message": f"unknown method {method}",
                                                "status": "NOT_FOUND"}}, status=404)
        frames = []
        for i, p in enumerate(pieces):
            c = {"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}
            chunk = {"candidates": [c], "modelVersion": model, "responseId": rid,
                     "usageMetadata": {"promptTokenCount": usage["promptTokenCount"]}}
            if i == len(pieces) - 1:
                c["finishReason"] = reason
                chunk["usageMetadata"] = usage
            frames.append(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
        # Gemini sends no role frame; pad so cut/stall trigger after two tokens like the others
        frames.insert(0, b": keep-alive\r\n\r\n")
        return await self._stream(request, frames, mode)

    async def _stats(self, request: web.Request) -> web.Response:
        with self.state.lock:
            return web.json_response({f"{a}/{m}": n for (a, m), n in self.state.counts.items()})


class FakeServer:
    """The fake upstreams on a background thread's event loop (for tests in this process)."""

    def __init__(self, port: int, delay_ms: float = 0.0):
        self.port = port
        self.fake = FakeProviders(delay_ms)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-providers", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def state(self) -> FakeState:
        return self.fake.state

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    anthropic_url = openai_url

    @property
    def gemini_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1beta"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.fake.app, access_log=None, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> "FakeServer":
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("fake providers did not start")
        return self

    def stop(self) -> None:
        async def _shutdown():
            if self._runner is not None:
                await self._runner.cleanup()
            # handlers of `-hang` / `-stall` requests sleep on; end them before the loop stops
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    a = ap.parse_args()
    web.run_app(FakeProviders(a.delay_ms).app, host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
