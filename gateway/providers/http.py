"""The HTTP plumbing shared by hosted providers: one aiohttp session per replica, failure mapping.

aiohttp, not httpx: httpx costs several times aiohttp's CPU per forwarded request, and the
upstream call is most of the gateway's per-request work.
"""
from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator

import aiohttp
import orjson

from gateway.errors import BadRequest
from gateway.fallback import Failure, Kind
from gateway.providers.base import Provider, ProviderError, scrub
from gateway.retry import parse_retry_after
from gateway.sse import Event, SSEParser
from gateway.trace_marks import TRACEPARENT

_SESSION: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    """The replica's shared client session: pooled keep-alive connections to every upstream."""
    global _SESSION
    if _SESSION is None or _SESSION.closed:
        _SESSION = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30),
            # timeouts are per target (first token / total), applied by the caller
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True, skip_auto_headers=("User-Agent",),
        )
    return _SESSION


async def close_session() -> None:
    global _SESSION
    if _SESSION is not None and not _SESSION.closed:
        await _SESSION.close()
    _SESSION = None


class HttpProvider(Provider):
    def __init__(self, name: str, cfg) -> None:
        super().__init__(name, cfg)
        self.base_url: str = cfg.base_url
        # read once at start; the value stays in this object only (never logged or returned)
        self._secret: str | None = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self._req_headers: dict[str, str] | None = None

    def auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _failure_from_status(self, status: int, raw: bytes, headers) -> Failure:
        retry_after = parse_retry_after(headers.get("retry-after"))
        if retry_after is None and headers.get("retry-after-ms"):
            try:
                retry_after = float(headers["retry-after-ms"]) / 1000.0
            except ValueError:
                retry_after = None
        if status in (401, 403):
            # never relay the upstream's words here: they may quote part of our key
            msg = f"provider {self.name!r} rejected the gateway's credentials ({status})"
        else:
            msg = _error_message(raw)
            msg = f"provider {self.name!r} answered {status}: {scrub(msg, self._secret)}"
        return Failure(Kind.STATUS, msg[:500], status=status, retry_after_s=retry_after)

    async def post(self, url: str, payload: dict, target, *, stream: bool) -> aiohttp.ClientResponse:
        """POST; returns the response once its headers arrived within first_token_timeout_s (for
        a non-streamed call the headers are its first byte). Error statuses raise ProviderError."""
        headers = self._req_headers
        if headers is None:   # static per provider: built once, not per request
            headers = self._req_headers = {"content-type": "application/json", **self.cfg.headers,
                                           **self.auth_headers()}
        tp = TRACEPARENT.get()
        if tp is not None:   # tracing on: the upstream's spans join this request's trace
            headers = {**headers, "traceparent": tp}
        try:
            data = orjson.dumps(payload)
        except orjson.JSONEncodeError as e:
            # nesting beyond orjson's limit (request validation bounds it well below) or a value
            # JSON cannot carry: the request's fault, never a bare 500
            raise BadRequest(f"request cannot be sent upstream: {e}", code="invalid_value") from None
        try:
            async with asyncio.timeout(target.cfg.first_token_timeout_s):
                resp = await session().post(url, data=data, headers=headers)
                if resp.status >= 400:
                    try:
                        raw = await resp.read()
                    finally:
                        resp.release()
                    raise ProviderError(self._failure_from_status(resp.status, raw, resp.headers))
        except TimeoutError:
            raise ProviderError(Failure(Kind.FIRST_TOKEN_TIMEOUT,
                                        f"provider {self.name!r}: no first byte within "
                                        f"{target.cfg.first_token_timeout_s}s")) from None
        except aiohttp.ClientError as e:
            raise ProviderError(Failure(Kind.CONNECT, f"provider {self.name!r}: {type(e).__name__}")) from None
        return resp

    async def post_json(self, url: str, payload: dict, target) -> tuple[dict, bytes]:
        resp = await self.post(url, payload, target, stream=False)
        try:
            async with asyncio.timeout(target.cfg.timeout_s):
                raw = await resp.read()
        except TimeoutError:
            resp.close()
            raise ProviderError(Failure(Kind.TIMEOUT, f"provider {self.name!r}: response not complete "
                                                      f"within {target.cfg.timeout_s}s")) from None
        except aiohttp.ClientError as e:
            resp.close()
            raise ProviderError(Failure(Kind.CONNECT, f"provider {self.name!r}: {type(e).__name__}")) from None
        finally:
            resp.release()
        try:
            return orjson.loads(raw), raw
        except orjson.JSONDecodeError:
            raise ProviderError(Failure(Kind.STATUS, f"provider {self.name!r} sent invalid JSON",
                                        status=502)) from None

    async def sse_events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Event]:
        """Upstream SSE events. Timeouts are the caller's (it knows first token vs gap)."""
        parser = SSEParser()
        try:
            async for chunk in resp.content.iter_any():
                for ev in parser.feed(chunk):
                    yield ev
        except aiohttp.ClientError as e:
            raise ProviderError(Failure(Kind.STREAM_BROKEN,
                                        f"provider {self.name!r}: stream failed ({type(e).__name__})")) from None
        finally:
            resp.release()


def _error_message(raw: bytes) -> str:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace")
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("type") or err)
        return str(err)
    return str(obj)


def broken(provider: str, why: str) -> ProviderError:
    return ProviderError(Failure(Kind.STREAM_BROKEN, f"provider {provider!r}: {why}"))
