"""LimitClient: one per gateway replica; admits requests out of quota leased from the broker.

Hot path: `admit` takes from local leases (dict operations, no await) whenever they suffice and
calls the broker only when a lease runs short. A background long-poll (`_watch_loop`) hands
unused quota back when idle or when the broker asks for it, reports token overage, and is the
replica's heartbeat. See broker.py for why this is exact across replicas.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from gateway.errors import BudgetExceeded, RateLimited
from gateway.limits.headers import ratelimit_headers
from gateway.limits.lease import LocalLeases, Reservation
from gateway.limits.pool import BUDGET_DIMS, CONCURRENT, NANO, RATE_DIMS, Cell, usd_to_nano
from gateway.limits.schema import LimiterTuning, LimitSpec
from gateway.metrics import METRICS

if TYPE_CHECKING:
    from gateway.adapters import AdapterQuota
    from gateway.config import GatewayConfig
    from gateway.costs.schema import BudgetSpec

log = logging.getLogger(__name__)

_DIM_NAMES = {"requests": "requests per minute", "tokens": "tokens per minute",
              CONCURRENT: "concurrent requests"}


@dataclass(slots=True)
class Admission:
    key_id: str
    route: str
    est_tokens: int
    est_cost_nano: int = 0          # worst-case cost reserved out of budget cells
    headers: dict[str, str] = field(default_factory=dict)
    res: Reservation = field(default_factory=Reservation)
    settled: bool = False


class LimitClient:
    def __init__(self, route_limits: dict[str, LimitSpec], key_limits: dict[str, LimitSpec], *,
                 broker: Any = None, tuning: LimiterTuning | None = None, holder_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 window_s: float = 60.0, budgets: "dict[str, BudgetSpec] | None" = None):
        self.route_limits = {k: v for k, v in route_limits.items() if v is not None and not v.is_empty()}
        self.key_limits = {k: v for k, v in key_limits.items() if v is not None and not v.is_empty()}
        # "key:<id>" / "route:<alias>" -> BudgetSpec: each request reserves its worst-case cost
        # out of these at admission (exact across replicas, like the rate limits) and settles it.
        self.budgets = {k: v for k, v in (budgets or {}).items() if v is not None}
        # (scope, dim) -> USD the cost ledger already knows this scope spent this period (set by
        # the gateway from its CostTracker); sent along with budget requests to the broker.
        self.spend_floor: Callable[[str, str], float] | None = None
        # the part of spend_floor priced from accelerator time, which the broker never settles
        self.local_floor: Callable[[str, str], float] | None = None
        self.tuning = tuning or LimiterTuning()
        self.holder = holder_id or f"replica-{uuid.uuid4().hex[:12]}"
        self.clock, self.wall, self.window_s = clock, wall, window_s
        self.leases = LocalLeases(horizon_s=self.tuning.lease_horizon_s)
        self._broker = broker
        # (key, route, adapter quota) -> cells and limits
        self._plans: dict[tuple[str, str, Any], list[tuple[Cell, int]]] = {}
        # (key, route, reserves budget, adapter quota) -> (cells admitted, their limits): built
        # once, not per request
        self._admit_plans: dict[tuple[str, str, bool, Any], tuple[list[tuple[Cell, int]], dict[Cell, int]]] = {}
        self._free: dict[Cell, int] = {}        # broker's free quota at the last call (headers only)
        self._watch: asyncio.Task | None = None
        self._inflight: asyncio.Future | None = None
        self._last_reply: dict | None = None      # a refusal, shared with the waiting batch
        self._closed = False

    @classmethod
    def from_config(cls, cfg: "GatewayConfig", *, tuning: LimiterTuning | None = None,
                    broker: Any = None) -> "LimitClient":
        routes = {alias: r.limits for alias, r in cfg.routes.items() if r.limits is not None}
        keys = {k.id: k.limits for k in cfg.keys if k.limits is not None}
        budgets = {f"route:{a}": r.budget for a, r in cfg.routes.items() if r.budget is not None}
        budgets.update({f"key:{k.id}": k.budget for k in cfg.keys if k.budget is not None})
        client = cls(routes, keys, tuning=tuning, broker=broker, budgets=budgets)
        adapters = any(a.limits is not None or a.budget is not None for r in cfg.routes.values()
                       for a in r.adapters.values())
        if broker is None and (client.route_limits or client.key_limits or client.budgets or adapters):
            from gateway.limits.broker import get_broker    # Ray only where limits exist
            client._broker = get_broker(client.tuning)
        return client

    def reconfigure(self, route_limits: dict[str, LimitSpec], key_limits: dict[str, LimitSpec],
                    budgets: "dict[str, BudgetSpec]") -> None:
        """New limits and budgets, live (gateway.yaml reconfigure, admin API). Requests already
        admitted settle against the cells they reserved; the broker takes the limit each request
        sends, so the next admission uses the new numbers everywhere."""
        self.route_limits = {k: v for k, v in route_limits.items() if v is not None and not v.is_empty()}
        self.key_limits = {k: v for k, v in key_limits.items() if v is not None and not v.is_empty()}
        self.budgets = {k: v for k, v in budgets.items() if v is not None}
        self._plans = {}
        self._admit_plans = {}
        if self._broker is None and (self.route_limits or self.key_limits or self.budgets):
            from gateway.limits.broker import get_broker    # Ray only where limits exist
            self._broker = get_broker(self.tuning)

    # -- request path --------------------------------------------------------------------
    def _plan(self, key_id: str, route: str, quota: "AdapterQuota | None" = None) -> list[tuple[Cell, int]]:
        plan = self._plans.get((key_id, route, quota))
        if plan is None:
            plan = []
            specs = [(f"route:{route}", self.route_limits.get(route)), (f"key:{key_id}", self.key_limits.get(key_id))]
            budgets = [(s, self.budgets.get(s)) for s in (f"key:{key_id}", f"route:{route}")]
            if quota is not None:   # an adapter's own (gateway/adapters.py), on top of its route's
                specs.append((quota.scope, quota.limits))
                budgets.append((quota.scope, quota.budget))
            for scope, spec in specs:
                if spec is None or spec.is_empty():
                    continue
                for dim, limit in (("requests", spec.rpm), ("tokens", spec.tpm), (CONCURRENT, spec.max_concurrent)):
                    if limit is not None:
                        plan.append(((scope, dim), limit))
            for scope, b in budgets:
                if b is None:
                    continue
                for dim, usd in (("usd_day", b.usd_per_day), ("usd_month", b.usd_per_month)):
                    if usd is not None:
                        plan.append(((scope, dim), max(usd_to_nano(usd), 1)))
            self._plans[(key_id, route, quota)] = plan
        return plan

    def _admit_plan(self, key_id: str, route: str, costs: bool,
                    quota: "AdapterQuota | None" = None) -> tuple[list[tuple[Cell, int]], dict[Cell, int]]:
        got = self._admit_plans.get((key_id, route, costs, quota))
        if got is None:
            # A request that can cost nothing (local or unpriced target) reserves no budget; the
            # CostTracker's own check still refuses it once the budget is spent.
            plan = [(c, lim) for c, lim in self._plan(key_id, route, quota) if c[1] not in BUDGET_DIMS or costs]
            got = self._admit_plans[(key_id, route, costs, quota)] = (plan, dict(plan))
        return got

    async def admit(self, *, key_id: str, route: str, est_tokens: int, est_cost_usd: float = 0.0,
                    quota: "AdapterQuota | None" = None) -> Admission:
        """Admit one request: its quota of every rate/concurrency cell, and `est_cost_usd` (its
        worst-case cost) reserved out of every budget of its key and route (and, for an adapter
        request, of the adapter's `quota`). Raises RateLimited or BudgetExceeded."""
        est_nano = usd_to_nano(est_cost_usd)
        adm = Admission(key_id=key_id, route=route, est_tokens=est_tokens, est_cost_nano=est_nano)
        plan, limits = self._admit_plan(key_id, route, est_nano > 0, quota)
        if not plan:
            return adm
        if self._broker is None:
            # only an adapter's own limits exist (a reconfigure added them): Ray only now, once
            from gateway.limits.broker import get_broker
            self._broker = await asyncio.to_thread(get_broker, self.tuning)
        needs = {c: (est_tokens if c[1] == "tokens" else est_nano if c[1] in BUDGET_DIMS else 1)
                 for c, _ in plan}
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_loop())
        tries = 0
        first = True
        while True:
            res, deficits = self.leases.reserve(needs, self.clock(), count_demand=first)
            first = False
            if not deficits:
                adm.res = res
                adm.headers = self._headers(plan)
                return adm
            inflight = self._inflight
            if inflight is not None:
                # Single flight: one broker call per replica at a time. It leases about recent
                # demand (which counts the waiters), so a burst of N admissions costs a few
                # broker calls, not N.
                self.leases.unreserve(res, self.clock())
                reply = await asyncio.shield(inflight)
                if reply is not None and not reply["ok"] and {s[0] for s in reply["short"]} & deficits.keys():
                    # Evaluated in the same batch: the broker had nothing for these cells.
                    raise self._rejected(reply, plan)
                continue
            tries += 1
            if tries > 4:      # >1 only when a window ends while the broker call is in flight
                self.leases.unreserve(res, self.clock())
                raise RateLimited("rate limit: could not lease quota across a window change; retry",
                                  retry_after_s=1.0)
            batch: asyncio.Future = asyncio.get_running_loop().create_future()
            self._inflight = batch
            reply = None
            try:
                reply = await self._lease(res, deficits, limits, plan, adm)
                if reply is not None:
                    return adm
            finally:
                # Waiters resume only after the grant is in the local pool (or failed).
                self._inflight = None
                batch.set_result(self._last_reply)

    async def _lease(self, res: Reservation, deficits: dict[Cell, int], limits: dict[Cell, int],
                     plan: list[tuple[Cell, int]], adm: Admission) -> dict | None:
        """One broker call for this admission's deficits (plus lease-ahead). Returns the reply
        once `adm` is admitted, None to retry, raises RateLimited when refused."""
        self._last_reply = None
        t_sent = self.clock()
        req = {c: (limits[c], n, self.leases.want_extra(c, t_sent)) for c, n in deficits.items()}
        # Hand back what is left of these leases in the same call (reserve() took nothing of
        # a short cell): the broker judges the whole need against all free quota at once.
        returns = self.leases.take_avail([c for c in deficits if c[1] != CONCURRENT], t_sent)
        floors = self._floors(deficits)
        fut = asyncio.wrap_future(self._broker.acquire.remote(self.holder, req, None, returns or None,
                                                              floors or None).future())
        try:
            reply = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The client went away mid-call; whatever the broker grants is still ours to
            # hold (and hand back), or it would be lost to every replica until reclaimed.
            fut.add_done_callback(lambda f: self._absorb(f, t_sent))
            self.leases.unreserve(res, self.clock())
            raise
        except BaseException:
            self.leases.unreserve(res, self.clock())
            raise
        now = self.clock()
        self._free.update(reply["free"])
        if not reply["ok"]:
            self._last_reply = reply
            self.leases.unreserve(res, now)
            raise self._rejected(reply, plan)
        windows = reply.get("windows")
        if self.leases.still_valid(res, now):
            if self.leases.apply_grants(reply["grants"], reply["window"], reply["reset_s"], t_sent,
                                        deficits, res, now, windows):
                adm.res = res
                adm.headers = self._headers(plan)
                return reply
        else:
            self.leases.apply_grants(reply["grants"], reply["window"], reply["reset_s"], t_sent,
                                     {}, Reservation(), now, windows)
        self.leases.unreserve(res, now)
        return None

    async def settle(self, admission: Admission, *, actual_tokens: int,
                     actual_cost_usd: float | None = None) -> None:
        self.settle_nowait(admission, actual_tokens=actual_tokens, actual_cost_usd=actual_cost_usd)

    def settle_nowait(self, admission: Admission, *, actual_tokens: int,
                      actual_cost_usd: float | None = None) -> None:
        """Synchronous settle (usable from a `finally` that cannot await). `actual_cost_usd`:
        what the answer cost (0 for no answer); None keeps the whole reservation as spent."""
        if admission.settled:
            return
        admission.settled = True
        now = self.clock()
        res = admission.res
        if res.slots:
            self.leases.release_slots(res.slots, now, res.epoch)
        for c, (w, n) in res.rate.items():
            if c[1] == "tokens":
                self.leases.settle_tokens(c, w, n, actual_tokens, now, res.epoch)
            elif c[1] in BUDGET_DIMS:
                actual = n if actual_cost_usd is None else usd_to_nano(actual_cost_usd)
                self.leases.settle_cost(c, w, n, actual, now, res.epoch)

    async def close(self) -> None:
        """Hand every lease back and leave (graceful shutdown)."""
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except (asyncio.CancelledError, Exception):
                pass
        if self._broker is not None:
            consumed = self.leases.pop_consumed()
            await self._broker.release.remote(self.holder, self.leases.return_all(self.clock()),
                                              self.leases.pop_charges(), True, consumed or None)

    # -- helpers -------------------------------------------------------------------------
    def _absorb(self, fut: asyncio.Future, t_sent: float) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        reply = fut.result()
        if reply["ok"]:
            self.leases.apply_grants(reply["grants"], reply["window"], reply["reset_s"], t_sent, {},
                                     Reservation(), self.clock())

    def _floors(self, cells) -> dict[Cell, int | tuple[int, int]]:
        """budget cell -> the ledger's spend, or (its spend, the local part of it)."""
        if self.spend_floor is None:
            return {}
        out: dict[Cell, int | tuple[int, int]] = {}
        for c in cells:
            if c[1] in BUDGET_DIMS:
                try:
                    total = usd_to_nano(self.spend_floor(c[0], c[1]))
                    out[c] = total if self.local_floor is None else (
                        total, min(total, usd_to_nano(self.local_floor(c[0], c[1]))))
                except Exception as e:      # a view of spend is an optimisation, never a failure
                    log.debug("spend floor unavailable: %s", e)
        return out

    def _reset_s(self) -> float:
        return self.window_s - (self.wall() % self.window_s)

    def _headers(self, plan: list[tuple[Cell, int]]) -> dict[str, str]:
        now = self.clock()
        best: dict[str, tuple[int, int, float]] = {}
        reset = self._reset_s()
        for c, limit in plan:
            if c[1] not in RATE_DIMS:
                continue
            remaining = self.leases.local_avail(c, now) + self._free.get(c, 0)
            cur = best.get(c[1])
            if cur is None or remaining < cur[1]:
                best[c[1]] = (limit, remaining, reset)
        return ratelimit_headers(best.get("requests"), best.get("tokens"))

    def _rejected(self, reply: dict, plan: list[tuple[Cell, int]]) -> RateLimited | BudgetExceeded:
        short = reply["short"]
        over = [s for s in short if s[0][1] in BUDGET_DIMS]
        if over:
            # Spend plus what requests in flight may still cost has reached the budget.
            (scope, dim), limit, free, _ = over[0]
            kind, name = scope.split(":", 1)
            METRICS.budget_rejection(kind)
            period = "day" if dim == "usd_day" else "month"
            return BudgetExceeded(
                f"budget exceeded: {kind} {name!r} has spent or reserved for requests in flight "
                f"all of its ${limit / NANO:.4f} per {period} budget")
        headers = self._headers(plan)
        retry = 0.0
        parts = []
        for (scope, dim), limit, free, reset_s in short:
            METRICS.limiter_rejection(scope.split(":", 1)[0], dim)
            kind, name = scope.split(":", 1)
            if math.isinf(reset_s):
                parts.append(f"this request alone needs more than the {kind} {name!r} limit of "
                             f"{limit} {_DIM_NAMES[dim]}")
                reset_s = self.window_s
            else:
                parts.append(f"{kind} {name!r} is over its limit of {limit} {_DIM_NAMES[dim]}")
            retry = max(retry, reset_s)
            if dim in ("requests", "tokens"):
                headers[f"x-ratelimit-remaining-{dim}"] = str(free)
        headers["retry-after-ms"] = str(int(retry * 1000))
        return RateLimited("rate limit exceeded: " + "; ".join(parts), retry_after_s=retry, headers=headers)

    async def _watch_loop(self) -> None:
        force: set[Cell] = set()
        ack = 0
        backoff = 0.05
        timeout = max(self.tuning.idle_return_s / 2, 0.05)
        while not self._closed:
            returns = self.leases.returnable(self.clock(), idle_s=self.tuning.idle_return_s, force=force)
            charges = self.leases.pop_charges()
            consumed = self.leases.pop_consumed()
            try:
                cells, ack = await self._broker.watch.remote(self.holder, returns, charges, timeout, ack,
                                                             consumed or None)
                if cells == ["*"]:
                    # Presumed dead by the broker, our quota is already back in its pool.
                    self.leases.forget_all()
                    cells = []
                force = set(cells)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Broker restarting. Quota we were handing back is lost (conservative: an
                # undershoot until the window ends); overage must not be lost, so keep it.
                for c, n in charges.items():
                    self.leases.charges[c] = self.leases.charges.get(c, 0) + n
                for c, (w, n) in consumed.items():     # settled spend must not be lost either
                    w0, n0 = self.leases.consumed.get(c, (w, 0))
                    self.leases.consumed[c] = (w, n + (n0 if w0 == w else 0))
                log.warning("limit broker unreachable (%s); retrying in %.2fs", type(e).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
