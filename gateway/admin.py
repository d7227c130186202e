"""The gateway's endpoints besides inference: /v1/models, the cost ledger (/v1/usage), /metrics,
/openapi.json and /healthz. /v1/usage and /metrics take the admin key only.

Key management (admin key only; needs `key_store` in gateway.yaml, else 404):
  POST   /v1/admin/keys                 {id?, routes?, adapters?, limits?, budget?} -> 201 {id, key, ...}: the secret
                                        is in this answer only; the store keeps its SHA-256
  GET    /v1/admin/keys                 every key (gateway.yaml's and the store's), no secrets or digests
  POST   /v1/admin/keys/{id}/rotate     a new secret for the key (the old one stops working)
  PATCH  /v1/admin/keys/{id}            {routes?, adapters?, limits?, budget?}: change a store key live
                                        (`adapters`: null = every adapter, [] = none, names or `prefix*`)
  DELETE /v1/admin/keys/{id}            revoke
  PATCH  /v1/admin/routes/{alias}       {limits?, budget?}: override a route's limits/budget live
Every replica polls the store (key_store.poll_interval_s), so a change applies on all of them within
about that long. Keys defined in gateway.yaml change through gateway.yaml (reconfigure).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.asgi import auth_header, read_body, request_headers, send_json
from gateway.errors import AuthError, BadRequest, GatewayError, NotFound
from gateway.key_auth import KeyAuth
from gateway.llm_protocol import adapter_model
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


# what a client key may read of a local model's readiness (not its replica-seconds: spend is admin's)
_READINESS_FIELDS = ("state", "tier", "warm_replicas", "phase", "phase_s", "starting_s")


def _adapter_patterns(value: object) -> list[str]:
    """A key's `adapters` as sent to the admin API, checked as gateway.yaml checks it."""
    from pydantic import TypeAdapter, ValidationError

    from gateway.config import KeyConfig
    try:
        return TypeAdapter(KeyConfig.model_fields["adapters"].annotation).validate_python(value)
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise BadRequest(f"'adapters' must be null or an array of adapter names or `prefix*`: {msg}",
                         param="adapters") from None


def _check_id(key_id: object, param: str) -> None:
    from gateway.key_records import ID_RULE, valid_id
    if not valid_id(key_id):
        raise BadRequest(f"invalid key id: {ID_RULE}", param=param, code="invalid_key_id")


class AdminEndpoints:
    """`costs` is the CostTracker (None: an empty ledger), `metrics` the Prometheus registry
    wrapper (None: an empty scrape), `openapi` the rendered document."""

    def __init__(self, *, keys: KeyAuth, routes: dict[str, CompiledRoute], costs: Any, metrics: Any,
                 openapi: bytes, control: Any = None):
        self.keys, self.routes, self.costs, self.metrics = keys, routes, costs, metrics
        self.openapi = openapi
        self.control = control    # the Gateway: key_store (KeyRecordStore | None), refresh_keys()

    def _require_admin(self, scope) -> None:
        if not self.keys.is_admin(auth_header(request_headers(scope))):
            raise AuthError("admin key required", code="admin_key_required")

    async def models(self, scope, receive, send) -> None:
        key = self.keys.authenticate(auth_header(request_headers(scope)))
        data = []
        for a in self.routes:
            if not self.keys.may_use(key, a):
                continue
            ready = self._readiness(a)
            extra = {} if ready is None else {"thawline": ready}
            data.append({"id": a, "object": "model", "created": 0, "owned_by": "thawline", **extra})
            # its adapters share its local app's readiness (what `thawline chat <route>:<adapter>` shows)
            data += [{"id": adapter_model(a, name), "object": "model", "created": 0, "owned_by": "thawline",
                      "parent": a, **extra} for name in self._adapters(a) if self.keys.may_use_adapter(key, name)]
        await send_json(send, 200, orjson.dumps({"object": "list", "data": data}))

    def _adapters(self, alias: str) -> list[str]:
        """The adapters the route's serve target(s) list (the providers' cached board listing)."""
        providers = getattr(self.control, "providers", None) or {}
        names: set[str] = set()
        for t in self.routes[alias].serve_targets:
            p = providers.get(t.provider_name)
            if p is not None:
                names |= p.adapters
        return sorted(names)

    def _readiness(self, alias: str) -> dict | None:
        """The route's first local (serve) target's cold/warm state as this replica last polled
        it from the readiness board, with the cold-start phase while one is in progress (what
        `thawline chat` shows while it waits). None: no local target, or not polled yet."""
        providers = getattr(self.control, "providers", None) or {}
        for tier in self.routes[alias].tiers:
            for t in tier:
                ready = getattr(providers.get(t.provider_name), "readiness", None)
                state = ready() if ready is not None else None
                if state is not None:
                    return {"target": t.id, "app": t.provider.app,
                            **{k: v for k, v in state.items() if k in _READINESS_FIELDS}}
        return None


    async def usage(self, scope, receive, send) -> None:
        self._require_admin(scope)
        qs = parse_qs(scope.get("query_string", b"").decode())
        group_by = qs.get("group_by", ["key"])[0]
        since = parse_since(qs.get("since", [None])[0])
        moved: list = []
        if self.costs is None:
            rows: list = []
        else:
            try:
                rows = await self.costs.query(group_by=group_by, since=since)
            except ValueError as e:
                raise BadRequest(str(e), param="group_by") from None
            listing = getattr(self.costs, "quarantined", None)   # after the read: it may move files
            moved = await listing() if listing is not None else []
        out = {"object": "list", "group_by": group_by, "data": rows}
        if moved:    # unreadable ledger files moved aside: their rows are not in `data`
            out["quarantined"] = moved
        await send_json(send, 200, orjson.dumps(out, default=str))

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

    # ---- key management ------------------------------------------------------------------
    async def manage(self, scope, receive, send) -> None:
        self._require_admin(scope)
        store = getattr(self.control, "key_store", None)
        if store is None:
            raise NotFound("key management needs `key_store` in gateway.yaml", code="key_store_not_configured")
        path = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root):]
        parts = path.removeprefix("/v1/admin/").strip("/").split("/")
        if parts[0] == "keys" and len(parts) >= 2:
            _check_id(parts[1], "id")    # never a path segment such as '..', a NUL, or 10k characters
        method = scope["method"]
        body: dict = {}
        if method in ("POST", "PATCH"):
            raw = await read_body(receive, 65536, request_headers(scope).get(b"content-length"))
            try:
                body = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError:
                raise BadRequest("request body is not valid JSON", code="invalid_json") from None
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object", code="invalid_json")
        if parts == ["keys"] and method == "GET":
            status, out = 200, await self._list_keys(store)
        elif parts == ["keys"] and method == "POST":
            status, out = 201, await self._create_key(store, body)
        elif len(parts) == 3 and parts[0] == "keys" and parts[2] == "rotate" and method == "POST":
            status, out = 200, await self._rotate_key(store, parts[1])
        elif len(parts) == 2 and parts[0] == "keys" and method == "PATCH":
            status, out = 200, await self._patch_key(store, parts[1], body)
        elif len(parts) == 2 and parts[0] == "keys" and method == "DELETE":
            status, out = 200, await self._revoke_key(store, parts[1])
        elif len(parts) >= 2 and parts[0] == "routes" and method == "PATCH":
            status, out = 200, await self._patch_route(store, "/".join(parts[1:]), body)
        else:
            raise NotFound(f"unknown admin path {method} {path}", code="unknown_url")
        await self.control.refresh_keys()   # this replica applies it at once; the others poll
        await send_json(send, status, orjson.dumps(out))

    def _fields(self, body: dict, allowed: set[str]) -> dict:
        from gateway.costs.schema import BudgetSpec
        from gateway.limits.schema import LimitSpec
        extra = set(body) - allowed
        if extra:
            raise BadRequest(f"unknown field(s) {sorted(extra)}", param=sorted(extra)[0])
        out: dict = {}
        try:
            if body.get("limits") is not None:
                out["limits"] = LimitSpec.model_validate(body["limits"]).model_dump(exclude_none=True)
            if body.get("budget") is not None:
                out["budget"] = BudgetSpec.model_validate(body["budget"]).model_dump(exclude_none=True)
        except ValueError as e:
            raise BadRequest(f"invalid limits/budget: {str(e).splitlines()[0]} ({e})",
                             param="limits" if "limits" in str(e) else "budget") from None
        if "routes" in body:
            routes = body["routes"]
            if not isinstance(routes, list) or not routes or not all(isinstance(r, str) for r in routes):
                raise BadRequest("'routes' must be a non-empty array of route aliases (or ['*'])", param="routes")
            unknown = [r for r in routes if r != "*" and r not in self.routes]
            if unknown:
                raise BadRequest(f"unknown route(s) {unknown}", param="routes")
            out["routes"] = routes
        if body.get("adapters") is not None:
            out["adapters"] = _adapter_patterns(body["adapters"])
        return out

    async def _list_keys(self, store) -> dict:
        import asyncio

        from gateway.key_records import public_view
        snap = await asyncio.to_thread(store.read_all)
        cfg_keys = [public_view(k.model_dump(mode="json", exclude_none=True), "config")
                    for k in self.control.cfg.keys]
        dyn = [public_view(d, "store") for i, d in sorted(snap.keys.items()) if i not in self.keys.config_ids]
        return {"object": "list", "data": cfg_keys + dyn}

    async def _create_key(self, store, body: dict) -> dict:
        import asyncio

        from gateway.config import KeyConfig
        from gateway.key_records import KeyExists, digest, key_record, new_key_id, new_secret, public_view
        fields = self._fields(body, {"id", "routes", "adapters", "limits", "budget"})
        key_id = body.get("id") or new_key_id()
        _check_id(key_id, "id")
        secret = new_secret()
        rec = key_record(KeyConfig(id=key_id, sha256=digest(secret), **fields))
        try:
            if key_id in self.keys.config_ids:
                raise KeyExists(key_id)
            await asyncio.to_thread(store.create_key, rec)
        except KeyExists:
            raise GatewayError(f"key {key_id!r} already exists", status=409, type="invalid_request_error",
                               code="key_exists") from None
        return {**public_view(rec, "store"), "key": secret}

    async def _edit(self, store, key_id: str, change) -> dict:
        """`change` applied to the stored key as one conditional edit (KeyRecordStore.update_key)."""
        import asyncio

        from gateway.key_records import KeyConflict, KeyMissing
        self._not_in_config(key_id)
        try:
            return await asyncio.to_thread(store.update_key, key_id, change)
        except KeyMissing:
            raise NotFound(f"no key {key_id!r}", code="key_not_found") from None
        except KeyConflict:
            raise GatewayError(f"key {key_id!r} is being changed concurrently; try again", status=409,
                               type="invalid_request_error", code="key_conflict") from None
        except ValueError as e:
            raise BadRequest(f"the change makes no valid key: {str(e).splitlines()[0]}") from None

    def _not_in_config(self, key_id: str) -> None:
        if key_id in self.keys.config_ids:
            raise GatewayError(f"key {key_id!r} is defined in gateway.yaml: change it there", status=409,
                               type="invalid_request_error", code="key_in_config")

    async def _rotate_key(self, store, key_id: str) -> dict:
        import time

        from gateway.key_records import digest, new_secret, public_view
        secret = new_secret()
        rec = await self._edit(store, key_id,
                               lambda r: {**r, "sha256": digest(secret), "rotated_at": time.time()})
        return {**public_view(rec, "store"), "key": secret}

    async def _patch_key(self, store, key_id: str, body: dict) -> dict:
        from gateway.key_records import key_from_record, public_view
        fields = self._fields(body, {"routes", "adapters", "limits", "budget"})

        def change(rec: dict) -> dict:
            # null removes the key's own limits / budget, and its adapters scope (then: every adapter)
            rec = {k: v for k, v in rec.items()
                   if not (k in ("limits", "budget", "adapters") and k in body and body[k] is None)}
            rec = {**rec, **fields}
            key_from_record(rec)         # still a valid key
            return rec
        return public_view(await self._edit(store, key_id, change), "store")

    async def _revoke_key(self, store, key_id: str) -> dict:
        import asyncio

        from gateway.key_records import KeyConflict
        self._not_in_config(key_id)
        try:
            revoked = await asyncio.to_thread(store.delete_key, key_id)
        except KeyConflict:
            raise GatewayError(f"key {key_id!r} is being changed concurrently; try again", status=409,
                               type="invalid_request_error", code="key_conflict") from None
        if not revoked:
            raise NotFound(f"no key {key_id!r}", code="key_not_found")
        return {"id": key_id, "revoked": True}

    async def _patch_route(self, store, alias: str, body: dict) -> dict:
        import asyncio

        from gateway.key_records import RouteOverride
        if alias not in self.routes:
            raise NotFound(f"The model `{alias}` does not exist", param="model")
        fields = self._fields(body, {"limits", "budget"})
        ov = RouteOverride.from_json(fields)
        await asyncio.to_thread(store.put_route, alias, ov)
        return {"route": alias, **{k: v for k, v in ov.to_json().items() if k != "updated_at"}}
