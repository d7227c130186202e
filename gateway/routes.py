"""Routes compiled once at start-up: alias -> ordered, weighted chain of targets.

Resolution per request is a dict lookup plus (only where several targets share a priority) a
weighted shuffle, so nothing is parsed or allocated per request beyond the returned list.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import groupby

from gateway.config import GatewayConfig, ProviderConfig, RouteConfig, TargetConfig


# eq=False: identity hash (ProviderConfig is not hashable) and cheap comparisons
@dataclass(frozen=True, slots=True, eq=False)
class Target:
    id: str                 # "<route>/<index>:<provider>/<model>": breaker and metrics key
    provider_name: str
    provider: ProviderConfig
    model: str
    cfg: TargetConfig


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    alias: str
    cfg: RouteConfig
    tiers: tuple[tuple[Target, ...], ...]   # by ascending priority
    weights: tuple[tuple[float, ...], ...]
    static_order: tuple[Target, ...] | None  # set when no tier has more than one target

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


def _target_id(alias: str, i: int, t: TargetConfig) -> str:
    return f"{alias}/{i}:{t.provider}/{t.model}"


def compile_routes(cfg: GatewayConfig) -> dict[str, CompiledRoute]:
    routes: dict[str, CompiledRoute] = {}
    for alias, rc in cfg.routes.items():
        targets = [
            (t.priority if t.priority is not None else i,
             Target(_target_id(alias, i, t), t.provider, cfg.providers[t.provider], t.model, t))
            for i, t in enumerate(rc.targets)]
        targets.sort(key=lambda pt: pt[0])  # stable: list order breaks priority ties
        tiers = tuple(tuple(t for _, t in grp) for _, grp in groupby(targets, key=lambda pt: pt[0]))
        weights = tuple(tuple(t.cfg.weight for t in tier) for tier in tiers)
        static = tuple(t for tier in tiers for t in tier) if all(len(x) == 1 for x in tiers) else None
        routes[alias] = CompiledRoute(alias, rc, tiers, weights, static)
    return routes
