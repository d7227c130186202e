"""LoRA adapters through the gateway, the pure parts: addressing, scopes and per-adapter entries.

A client addresses adapter A of route R as `model: "R:A"` (gateway/llm_protocol.py owns the form:
`split_adapter_model`, `adapter_model`). The request goes to R's serve target(s) with
`HandleRequest.adapter = A`, then only to the `fallback` targets R's `adapters` entry for A
declares (routes.CompiledRoute.for_adapter). Whether A exists is what the LLM app's router
listed on the readiness board (polled by the serve provider, never on the request path); whether
a key may use it is the key's `adapters` scope. Both refusals are the same 404 body
(`model_not_found_error`), so a key outside an adapter's scope cannot tell that it exists.

Patterns (a key's `adapters`, the keys of a route's `adapters`) are adapter names or prefixes
ending in `*`; matching one name is a dict lookup plus one `startswith` per prefix pattern, so it
does not grow with the number of adapters listed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Iterable, Mapping, TypeVar

from gateway.errors import NotFound
from gateway.llm_protocol import ADAPTER_SEPARATOR, adapter_model, model_not_found, split_adapter_model

T = TypeVar("T")

ADAPTER_SCOPE = "adapter:"   # limiter cells, budgets and spend totals of one adapter of one route
PREFIX = "*"


def adapter_scope(route: str, adapter: str) -> str:
    """The scope of `adapter` of `route` ("adapter:<route>:<adapter>"), next to "key:<id>" and
    "route:<alias>": its limiter cells, its budget and its spend totals."""
    return ADAPTER_SCOPE + adapter_model(route, adapter)


def model_not_found_error(model: str) -> NotFound:
    """The gateway's 404 for `model`, byte for byte the body the LLM app answers
    (llm_protocol.model_not_found): for an unknown route, an adapter that does not exist, and one
    outside the key's scope alike."""
    err = model_not_found(model).body["error"]
    return NotFound(err["message"], type=err["type"], code=err["code"], param=err["param"])


def split_route(model: str, routes: Mapping[str, Any]) -> tuple[str, str] | None:
    """(route alias, adapter) when `model` names an adapter of a route in `routes`, else None.
    A route alias may hold ':' itself (`ft:base:org:id`) and an adapter name never does, so
    when the first ':' does not end a route alias the last one is tried."""
    alias, adapter = split_adapter_model(model)
    if adapter is None:
        return None
    if alias in routes:
        return alias, adapter
    alias, _, adapter = model.rpartition(ADAPTER_SEPARATOR)
    return (alias, adapter) if adapter and alias in routes else None


class AdapterRules(Generic[T]):
    """Values keyed by adapter name or `prefix*`. `match(name)`: the exact entry, else the one of
    the longest matching prefix, else None."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, entries: Mapping[str, T]) -> None:
        self.exact: dict[str, T] = {k: v for k, v in entries.items() if not k.endswith(PREFIX)}
        self.prefixes: tuple[tuple[str, T], ...] = tuple(sorted(
            ((k[:-1], v) for k, v in entries.items() if k.endswith(PREFIX)), key=lambda kv: -len(kv[0])))

    def match(self, name: str) -> T | None:
        got = self.exact.get(name)
        if got is not None:
            return got
        for prefix, value in self.prefixes:
            if name.startswith(prefix):
                return value
        return None

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)


class AdapterScope:
    """A key's `adapters`: None allows every adapter, [] none, else the names and prefixes listed."""

    __slots__ = ("rules",)

    def __init__(self, patterns: Iterable[str] | None) -> None:
        self.rules = None if patterns is None else AdapterRules({p: True for p in patterns})

    def allows(self, adapter: str) -> bool:
        return self.rules is None or self.rules.match(adapter) is not None


@dataclass(frozen=True, slots=True)
class AdapterQuota:
    """The limits and budget of one adapter of one route (its `adapters` entry), counted under
    `scope` on top of the route's and the key's."""
    scope: str
    limits: Any = None     # gateway.limits.schema.LimitSpec | None
    budget: Any = None     # gateway.costs.schema.BudgetSpec | None
