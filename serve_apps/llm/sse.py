"""The LLM app's HTTP stream: OpenAI chunks as SSE frames, with OpenAI's end-of-stream rules.

Pure (no Ray, no FastAPI), so the rules are unit-tested: `data: [DONE]` ends only a stream that
finished; a stream that fails after 200 went out ends with one SSE error event and no `[DONE]`,
so no client can take a cut answer for a finished one.
"""
from __future__ import annotations

import json
from typing import AsyncIterator

from gateway.llm_protocol import error_body


async def sse_frames(first: dict | None, rest: AsyncIterator[dict], want_usage: bool) -> AsyncIterator[str]:
    """`first` is the chunk already pulled (to answer errors before 200), `rest` the remaining
    chunks. The handle protocol always ends with a usage chunk; it is sent only when the client
    asked for it (stream_options.include_usage)."""
    async def chunks():
        if first is not None:
            yield first
        async for c in rest:
            yield c

    try:
        async for chunk in chunks():
            if not want_usage and not chunk.get("choices") and "usage" in chunk:
                continue
            if not want_usage:
                chunk.pop("usage", None)
            yield f"data: {json.dumps(chunk)}\n\n"
    except Exception as e:  # noqa: BLE001 - after 200: reported in the stream, never silently
        yield f"data: {json.dumps(error_body(str(e)[:500], 500, 'server_error'))}\n\n"
        return
    yield "data: [DONE]\n\n"
