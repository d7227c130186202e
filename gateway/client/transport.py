"""The two ways the client reaches the gateway: HTTP (outside the cluster) and a Serve
DeploymentHandle to the gateway's ingress (inside it, no HTTP hop).

Both speak the same request/response model (see docs/INTERFACES.md, "gateway deployment <->
client handle"): a request is (method, path, headers, body); a response is (status, headers,
body); a stream is a head (status + headers, plus the error body if refused) followed by
payload dicts. Everything above this module is transport-agnostic.

Ray is imported only by the handle transport, and only when one is built.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

import httpx

from gateway.client.types import LateHeaders
from gateway.errors import Unavailable
from gateway.sse import PayloadReader


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    elapsed_s: float | None = None


def _lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in dict(headers or {}).items()}


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except (json.JSONDecodeError, ValueError):
        return resp.text


def _unreachable(base_url: str, exc: Exception) -> Unavailable:
    if isinstance(exc, httpx.TimeoutException):
        kind = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        kind = "unreachable"
    else:  # the connection broke after the request went out (e.g. mid-stream)
        kind = "connection broke"
    return Unavailable.received_from(f"gateway at {base_url} {kind}: {type(exc).__name__}: {exc}".rstrip(": "))


# --------------------------------------------------------------------------------------- HTTP

class HTTPTransport:
    """Blocking HTTP via httpx, with one pooled connection set per client."""

    def __init__(self, base_url: str, timeout_s: float):
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=httpx.Timeout(timeout_s, connect=10.0))

    def send(self, method: str, path: str, headers: dict[str, str], body: Any,
             params: dict[str, Any] | None = None) -> RawResponse:
        t0 = time.perf_counter()
        try:
            resp = self._http.request(method, path, headers=headers, json=body, params=params)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from None
        return RawResponse(resp.status_code, _lower(resp.headers), _json_or_text(resp),
                           time.perf_counter() - t0)

    def stream(self, method: str, path: str, headers: dict[str, str], body: Any) -> Iterator[Any]:
        """Yields the head (a RawResponse) first, then payload dicts; stops at [DONE] or after an
        error payload (which a stream that ends without [DONE] also gets: gateway/sse.py)."""
        try:
            with self._http.stream(method, path, headers=headers, json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    yield RawResponse(resp.status_code, _lower(resp.headers), _json_or_text(resp))
                    return
                yield RawResponse(resp.status_code, _lower(resp.headers))
                reader = PayloadReader()
                for chunk in resp.iter_bytes():
                    payloads = reader.feed(chunk)
                    if reader.late_headers:
                        yield LateHeaders(reader.late_headers)
                        reader.late_headers.clear()
                    yield from payloads
                    if reader.done:
                        return
                yield from reader.close()
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from None

    def close(self) -> None:
        self._http.close()


class AsyncHTTPTransport:
    def __init__(self, base_url: str, timeout_s: float):
        self.base_url = base_url
        self._http = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout_s, connect=10.0))

    async def send(self, method: str, path: str, headers: dict[str, str], body: Any,
                   params: dict[str, Any] | None = None) -> RawResponse:
        t0 = time.perf_counter()
        try:
            resp = await self._http.request(method, path, headers=headers, json=body, params=params)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from None
        return RawResponse(resp.status_code, _lower(resp.headers), _json_or_text(resp),
                           time.perf_counter() - t0)

    async def stream(self, method: str, path: str, headers: dict[str, str], body: Any) -> AsyncIterator[Any]:
        try:
            async with self._http.stream(method, path, headers=headers, json=body) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    yield RawResponse(resp.status_code, _lower(resp.headers), _json_or_text(resp))
                    return
                yield RawResponse(resp.status_code, _lower(resp.headers))
                reader = PayloadReader()
                async for chunk in resp.aiter_bytes():
                    payloads = reader.feed(chunk)
                    if reader.late_headers:
                        yield LateHeaders(reader.late_headers)
                        reader.late_headers.clear()
                    for payload in payloads:
                        yield payload
                    if reader.done:
                        return
                for payload in reader.close():
                    yield payload
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from None

    async def close(self) -> None:
        await self._http.aclose()


# ------------------------------------------------------------------------- DeploymentHandle

def _handle_request(method: str, path: str, headers: dict[str, str], body: Any,
                    params: dict[str, Any] | None) -> dict[str, Any]:
    if params:
        from urllib.parse import urlencode
        path = f"{path}?{urlencode({k: v for k, v in params.items() if v is not None})}"
    return {"method": method, "path": path, "headers": headers, "body": body}


def _as_raw(answer: Any, elapsed_s: float | None = None) -> RawResponse:
    if not isinstance(answer, dict) or "status" not in answer:
        raise Unavailable.received_from(f"gateway deployment answered an unexpected object: "
                                        f"{type(answer).__name__}")
    return RawResponse(int(answer["status"]), _lower(answer.get("headers")), answer.get("body"), elapsed_s)


def _is_head(item: Any) -> bool:
    # A refused stream yields one {"status", "headers", "body"} item; chunks never carry "status".
    return isinstance(item, dict) and "status" in item and "body" in item


class HandleTransport:
    """Calls the gateway deployment's `api` / `api_stream` methods through a DeploymentHandle.

    One object serves both the sync and the async client: a DeploymentResponse can be
    `.result()`-ed or awaited, and a streaming response iterated either way.
    """

    base_url = "serve://handle"

    def __init__(self, handle: Any):
        self._handle = handle
        self._stream_handle = handle.options(stream=True)

    # sync
    def send(self, method, path, headers, body, params=None) -> RawResponse:
        t0 = time.perf_counter()
        answer = self._handle.api.remote(_handle_request(method, path, headers, body, params)).result()
        return _as_raw(answer, time.perf_counter() - t0)

    def stream(self, method, path, headers, body) -> Iterator[Any]:
        gen = self._stream_handle.api_stream.remote(_handle_request(method, path, headers, body, None))
        first = True
        for item in gen:
            if first:
                first = False
                if _is_head(item):
                    yield _as_raw(item)
                    return
                yield RawResponse(200)
            yield item
        if first:
            yield RawResponse(200)

    def close(self) -> None:
        pass

    # async
    async def asend(self, method, path, headers, body, params=None) -> RawResponse:
        t0 = time.perf_counter()
        answer = await self._handle.api.remote(_handle_request(method, path, headers, body, params))
        return _as_raw(answer, time.perf_counter() - t0)

    async def astream(self, method, path, headers, body) -> AsyncIterator[Any]:
        gen = self._stream_handle.api_stream.remote(_handle_request(method, path, headers, body, None))
        first = True
        async for item in gen:
            if first:
                first = False
                if _is_head(item):
                    yield _as_raw(item)
                    return
                yield RawResponse(200)
            yield item
        if first:
            yield RawResponse(200)


class AsyncHandleTransport:
    """The async face of HandleTransport (same `send`/`stream` names as AsyncHTTPTransport)."""

    def __init__(self, handle: Any):
        self._t = HandleTransport(handle)
        self.base_url = HandleTransport.base_url

    async def send(self, method, path, headers, body, params=None) -> RawResponse:
        return await self._t.asend(method, path, headers, body, params)

    def stream(self, method, path, headers, body) -> AsyncIterator[Any]:
        return self._t.astream(method, path, headers, body)

    async def close(self) -> None:
        pass
