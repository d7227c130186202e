"""The gateway's endpoints besides inference: /v1/models, the cost ledger (/v1/usage), /metrics,
/openapi.json and /healthz. /v1/usage and /metrics take the admin key only."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.asgi import auth_header, request_headers, send_json
from gateway.errors import AuthError, BadRequest
from gateway.keys import KeyStore
from gateway.routes import CompiledRoute


def parse_since(since_s: str | None) -> datetime | None:
    """`since` of /v1/usage: ISO-8601 time or unix seconds (UTC when no zone is given)."""
    if not since_s:
        return None
    try:
        since = (datetime.fromtimestamp(float(since_s), tz=timezone.utc) if since_s.replace(".", "").isdigit()
                 else datetime.fromisoformat(since_s.replace("Z", "+00:00")))
    except (ValueError, OverflowError, OSError):
        # OverflowError / OSError: unix seconds beyond what a datetime can hold
        raise BadRequest("'since' must be an ISO-8601 time or unix seconds", param="since") from None
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return since


class AdminEndpoints:
    """`costs` is the CostTracker (None: an empty ledger), `metrics` the Prometheus registry
    wrapper (None: an empty scrape), `openapi` the rendered document."""

    def __init__(self, *, keys: KeyStore, routes: dict[str, CompiledRoute], costs: Any, metrics: Any,
                 openapi: bytes):
        self.keys, self.routes, self.costs, self.metrics = keys, routes, costs, metrics
        self.openapi = openapi

    def _require_admin(self, scope) -> None:
        if not self.keys.is_admin(auth_header(request_headers(scope))):
            raise AuthError("admin key required", code="admin_key_required")

    async def models(self, scope, receive, send) -> None:
        key = self.keys.authenticate(auth_header(request_headers(scope)))
        data = [{"id": a, "object": "model", "created": 0, "owned_by": "thawline"}
                for a in self.routes if self.keys.may_use(key, a)]
        await send_json(send, 200, orjson.dumps({"object": "list", "data": data}))

    async def usage(self, scope, receive, send) -> None:
        self._require_admin(scope)
        qs = parse_qs(scope.get("query_string", b"").decode())
        group_by = qs.get("group_by", ["key"])[0]
        since = parse_since(qs.get("since", [None])[0])
        if self.costs is None:
            rows: list = []
        else:
            try:
                rows = await self.costs.query(group_by=group_by, since=since)
            except ValueError as e:
                raise BadRequest(str(e), param="group_by") from None
        await send_json(send, 200, orjson.dumps({"object": "list", "group_by": group_by, "data": rows},
                                                default=str))

    async def metrics_text(self, scope, receive, send) -> None:
        # admin only: the series carry per-route and per-target spend and traffic. Prometheus
        # scrapes with `authorization: Bearer <admin key>` (docs/config-gateway.md, ServerConfig)
        self._require_admin(scope)
        if self.metrics is None:
            body, ctype = b"", "text/plain"
        else:
            body, ctype = self.metrics.render()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def openapi_doc(self, scope, receive, send) -> None:
        # the document enumerates every route alias: any caller that may use the API (a valid
        # client key, anonymous when require_auth is off, or the admin key) may read it
        auth = auth_header(request_headers(scope))
        if not self.keys.is_admin(auth):
            self.keys.authenticate(auth)
        await send_json(send, 200, self.openapi)

    async def health(self, scope, receive, send) -> None:
        await send_json(send, 200, b'{"status":"ok"}')
