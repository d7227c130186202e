"""Routes compiled once at start-up: alias -> ordered, weighted chain of targets.

Resolution per request is a dict lookup plus (only where several targets share a priority) a
weighted shuffle, so nothing is parsed or allocated per request beyond the returned list.

An adapter request (`<route>:<adapter>`, gateway/adapters.py) runs on the route's adapter chain
(`CompiledRoute.for_adapter`): the route's serve targets, each sending the adapter, then only the
`fallback` targets of the adapter's entry in the route's `adapters`; never the route's other
(base model) targets. Built on the first request for that adapter and kept.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import Any

from gateway.adapters import AdapterQuota, AdapterRules, adapter_scope
from gateway.config import AdapterRouteConfig, GatewayConfig, ProviderConfig, RouteConfig, TargetConfig
from gateway.llm_protocol import adapter_model

ADAPTER_ROUTES_KEPT = 10_000   # adapter chains kept per route (built only for listed adapters)

Tiers = tuple[tuple["Target", ...], ...]


# eq=False: identity hash (ProviderConfig is not hashable) and cheap comparisons
@dataclass(frozen=True, slots=True, eq=False)
class Target:
    id: str                 # "<route>/<index>:<provider>/<model>": breaker and metrics key
    provider_name: str
    provider: ProviderConfig
    model: str
    cfg: TargetConfig
    adapter: str | None = None   # the LoRA adapter a serve target sends (HandleRequest.adapter)


@dataclass(frozen=True, slots=True)
class AdapterEntry:
    """One entry of a route's `adapters`, compiled: its config and its fallback tiers."""
    cfg: AdapterRouteConfig
    tiers: Tiers


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    alias: str
    cfg: RouteConfig
    tiers: tuple[tuple[Target, ...], ...]   # by ascending priority
    weights: tuple[tuple[float, ...], ...]
    static_order: tuple[Target, ...] | None  # set when no tier has more than one target
    serve_targets: tuple[Target, ...] = ()  # the route's local (serve) targets: who serves its adapters
    adapter_rules: AdapterRules[AdapterEntry] | None = None
    adapter: str | None = None               # set on an adapter's chain (for_adapter)
    quota: AdapterQuota | None = None        # that adapter's limits / budget, if its entry sets any
    adapter_routes: dict[str, "CompiledRoute"] = field(default_factory=dict, compare=False, repr=False)

    def order(self, rng: random.Random | None = None) -> list[Target] | tuple[Target, ...]:
        if self.static_order is not None:
            return self.static_order
        r = rng or random
        out: list[Target] = []
        for tier, weights in zip(self.tiers, self.weights):
            if len(tier) == 1:
                out.append(tier[0])
                continue
            # weighted sampling without replacement (Efraimidis-Spirakis keys u**(1/w))
            keyed = sorted(tier, key=lambda t, w=dict(zip(tier, weights)): -(r.random() ** (1.0 / w[t])))
            out.extend(keyed)
        return out

    @property
    def model(self) -> str:
        """What a client sends as `model` for this chain: the alias, or "<alias>:<adapter>"."""
        return adapter_model(self.alias, self.adapter)

    def for_adapter(self, adapter: str) -> "CompiledRoute":
        """The chain of `adapter` of this route (built once per adapter, then a dict lookup)."""
        got = self.adapter_routes.get(adapter)
        if got is None:
            if len(self.adapter_routes) >= ADAPTER_ROUTES_KEPT:
                self.adapter_routes.clear()
            got = self.adapter_routes[adapter] = self._adapter_route(adapter)
        return got

    def _adapter_route(self, adapter: str) -> "CompiledRoute":
        entry = self.adapter_rules.match(adapter) if self.adapter_rules is not None else None
        tiers: list[tuple[Target, ...]] = []
        for tier in self.tiers:
            serve = tuple(replace(t, adapter=adapter) for t in tier if t.provider.type == "serve")
            if serve:
                tiers.append(serve)
        serve_targets = tuple(t for tier in tiers for t in tier)
        tiers += entry.tiers if entry is not None else ()
        quota = None
        if entry is not None and (entry.cfg.limits is not None or entry.cfg.budget is not None):
            quota = AdapterQuota(adapter_scope(self.alias, adapter), entry.cfg.limits, entry.cfg.budget)
        return _route(self.alias, self.cfg, tuple(tiers), serve_targets=serve_targets, adapter=adapter, quota=quota)

    def all_targets(self) -> list[Target]:
        """Every target this route may call: its chain and its adapters' fallback targets."""
        out = [t for tier in self.tiers for t in tier]
        if self.adapter_rules is not None:
            entries = [*self.adapter_rules.exact.values(), *(e for _, e in self.adapter_rules.prefixes)]
            out += [t for e in entries for tier in e.tiers for t in tier]
        return out


def _target_id(alias: str, i: int, t: TargetConfig) -> str:
    return f"{alias}/{i}:{t.provider}/{t.model}"


def _tiers(id_prefix: str, cfg: GatewayConfig, targets: list[TargetConfig]) -> Tiers:
    """Targets grouped by ascending priority (list order breaks ties)."""
    keyed = [(t.priority if t.priority is not None else i,
              Target(_target_id(id_prefix, i, t), t.provider, cfg.providers[t.provider], t.model, t))
             for i, t in enumerate(targets)]
    keyed.sort(key=lambda pt: pt[0])  # stable: list order breaks priority ties
    return tuple(tuple(t for _, t in grp) for _, grp in groupby(keyed, key=lambda pt: pt[0]))


def _route(alias: str, rc: RouteConfig, tiers: Tiers, **kw: Any) -> CompiledRoute:
    weights = tuple(tuple(t.cfg.weight for t in tier) for tier in tiers)
    static = tuple(t for tier in tiers for t in tier) if all(len(x) == 1 for x in tiers) else None
    return CompiledRoute(alias, rc, tiers, weights, static, **kw)


def compile_routes(cfg: GatewayConfig) -> dict[str, CompiledRoute]:
    routes: dict[str, CompiledRoute] = {}
    for alias, rc in cfg.routes.items():
        tiers = _tiers(alias, cfg, rc.targets)
        serve = tuple(t for tier in tiers for t in tier if t.provider.type == "serve")
        # fallback ids: "<alias>:<entry>/<index>:<provider>/<model>" (their own breakers)
        rules = AdapterRules({p: AdapterEntry(a, _tiers(adapter_model(alias, p), cfg, a.fallback))
                              for p, a in rc.adapters.items()}) if rc.adapters else None
        routes[alias] = _route(alias, rc, tiers, serve_targets=serve, adapter_rules=rules)
    return routes
