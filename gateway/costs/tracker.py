"""CostTracker: one per gateway replica. Prices rows, checks budgets, feeds the shared ledger.

`record` and `check_budget` are synchronous and make no remote call: rows are batched to the
LedgerActor every `sync_interval_s`, and its reply carries the cluster-wide spend of every
budgeted scope. A budget check therefore sees all replicas' spend up to one sync interval old
plus this replica's own spend since: across replicas a budget can be overrun by at most what
the other replicas spend within one interval (and by requests already in flight when it is
reached, whose cost is only known when they finish). That check alone would let a concurrent
burst overshoot, so budgets are also reserved at admission: the LimitClient reserves
each request's `worst_case_usd` out of budget cells at the limits broker (exact across
replicas) and settles them to the real cost; this check remains for what is priced afterwards
(local targets).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from gateway.adapters import AdapterQuota
from gateway.costs.budget import LOCAL, SpendTotals, check, periods
from gateway.costs.ledger import Ledger
from gateway.costs.pricing import PriceBook, cost_usd, worst_case_usd
from gateway.costs.schema import BudgetSpec, LedgerRow
from gateway.errors import BudgetExceeded
from gateway.metrics import METRICS
from gateway.traffic import PROCESS_ID, counters

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CostTracker:
    def __init__(self, book: PriceBook, *, budgets: dict[str, BudgetSpec] | None = None,
                 local_targets: dict[str, tuple[str, float]] | None = None, ledger: Ledger | None = None,
                 actor: Any = None, sync_interval_s: float = 0.5, max_pending_rows: int = 200_000,
                 clock: Callable[[], datetime] = _utcnow, traffic: Callable[[], dict] | None = None):
        self.book = book
        self.budgets = budgets or {}                    # "key:<id>" / "route:<alias>" -> BudgetSpec
        # "adapter:<route>:<adapter>" -> BudgetSpec, added by the first request for each adapter
        # whose route entry sets a budget (a `prefix*` entry cannot be listed ahead); emptied when
        # the gateway applies a new config, refilled by the next requests
        self.adapter_budgets: dict[str, BudgetSpec] = {}
        self.local_targets = local_targets or {}        # provider name -> (serve app, usd_per_hour)
        self.actor = actor
        self.ledger = ledger if ledger is not None else (None if actor is not None else Ledger(None))
        self.sync_interval_s = sync_interval_s
        self.max_pending_rows = max_pending_rows
        self.clock = clock
        self.pending: list[dict] = []
        self.unsynced = SpendTotals()                   # this replica's spend not yet in `synced`
        self.synced: dict[tuple[str, str], float] = {}  # cluster-wide spend at the last sync
        self._task: asyncio.Task | None = None
        self._closed = False
        # this process's traffic counters, handed to the actor with the rows when they changed,
        # so the dashboard counts every replica's traffic (gateway/traffic.py)
        self.traffic = traffic
        self.process_id = PROCESS_ID
        self._traffic_sent: dict | None = None

    @classmethod
    def from_config(cls, cfg: "GatewayConfig", *, actor: Any = None) -> "CostTracker":
        book = PriceBook(global_overrides=dict(cfg.prices),
                         provider_overrides={n: dict(p.prices) for n, p in cfg.providers.items() if p.prices})
        budgets = {f"route:{a}": r.budget for a, r in cfg.routes.items() if r.budget is not None}
        budgets.update({f"key:{k.id}": k.budget for k in cfg.keys if k.budget is not None})
        local = {n: (p.app, p.usd_per_hour) for n, p in cfg.providers.items()
                 if p.type == "serve" and p.usd_per_hour is not None}
        if actor is None:
            from gateway.costs.ledger_actor import get_ledger_actor   # Ray only at the edge
            actor = get_ledger_actor(cfg.ledger.url, cfg.ledger.storage_options, cfg.ledger.flush_interval_s,
                                     cfg.ledger.compact_interval_s)
        sync = min(0.5, cfg.ledger.flush_interval_s)
        return cls(book, budgets=budgets, local_targets=local, actor=actor, sync_interval_s=sync,
                   traffic=lambda: counters(METRICS.registry))

    # -- request path --------------------------------------------------------------------
    def _spent(self, scope: str, period_id: str) -> float:
        if self.actor is None:
            return self.ledger.totals.get(scope, period_id)
        return self.synced.get((scope, period_id), 0.0) + self.unsynced.get(scope, period_id)

    def check_budget(self, *, key_id: str, route: str, quota: AdapterQuota | None = None) -> None:
        """`quota`: an adapter request's own limits and budget (its route entry's), checked too."""
        over = None
        if self.budgets:
            over = check(self.budgets, [f"key:{key_id}", f"route:{route}"], self._spent, self.clock())
        if quota is not None and quota.budget is not None:
            if self.adapter_budgets.get(quota.scope) is not quota.budget:
                self.adapter_budgets[quota.scope] = quota.budget   # its spend is synced from now on
            if over is None:
                over = check({quota.scope: quota.budget}, [quota.scope], self._spent, self.clock())
        if over is not None:
            METRICS.budget_rejection(over.scope.split(":", 1)[0])
            raise BudgetExceeded(over.message())

    def period_spend(self, scope: str, dim: str) -> float:
        """USD `scope` ("key:<id>" / "route:<alias>" / "adapter:<route>:<adapter>") spent this UTC
        day (dim "usd_day") or month, as far as this replica knows (cluster-wide at the last sync
        plus its own since)."""
        day, month = periods(self.clock())
        return self._spent(scope, day if dim == "usd_day" else month)

    def period_local_spend(self, scope: str, dim: str) -> float:
        """The part of period_spend priced from accelerator time (local targets)."""
        return self.period_spend(LOCAL + scope, dim)

    def worst_case_usd(self, targets: list[tuple[str, str]], *, prompt_tokens: int,
                       max_output_tokens: int) -> float:
        """The most a request may cost on any of `targets` ((provider, model) pairs): what a
        budget reserves for it at admission. Local targets count 0 (priced afterwards)."""
        prices = [None if prov in self.local_targets else self.book.lookup(prov, model)[0]
                  for prov, model in targets]
        return worst_case_usd(prices, prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens)

    def record(self, row: LedgerRow) -> LedgerRow:
        """Price `row` (sets cost_usd and pricing), count it in metrics, queue it for the ledger."""
        if row.target in self.local_targets:
            # Priced later by the ledger actor from accelerator-seconds (see ledger_actor.py).
            row.pricing = "local"
        else:
            price, how = self.book.lookup(row.target, row.model)
            row.pricing = how
            if price is not None:
                row.cost_usd = cost_usd(price, tokens_in=row.tokens_in, tokens_out=row.tokens_out,
                                        tokens_cached=row.tokens_cached)
        METRICS.record_request(route=row.route, target=row.target, model=row.model, status=row.status,
                               tokens_in=row.tokens_in, tokens_out=row.tokens_out,
                               tokens_cached=row.tokens_cached, cost_usd=row.cost_usd,
                               ttft_s=None if row.ttft_ms is None else row.ttft_ms / 1000.0, key=row.key_id)
        d = row.to_dict()
        if self.actor is None:
            self.ledger.append([d])
            return row
        if self.budgets or self.adapter_budgets:
            self.unsynced.add(row.key_id, row.route, row.cost_usd, row.ts, adapter=row.adapter)
        self.pending.append(d)
        if len(self.pending) > self.max_pending_rows:
            drop = len(self.pending) - self.max_pending_rows
            del self.pending[:drop]
            log.error("ledger actor unreachable: dropped %d oldest ledger rows", drop)
        if self._task is None:
            self.start()
        return row

    def start(self) -> None:
        """Start the periodic sync (idempotent; a no-op without an event loop: close() pushes)."""
        if self._task is None and not self._closed and self.actor is not None:
            try:
                self._task = asyncio.get_running_loop().create_task(self._sync_loop())
            except RuntimeError:
                pass

    # -- sync with the ledger actor ------------------------------------------------------
    async def _sync_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.sync_interval_s)
            await self.sync()

    async def sync(self) -> None:
        """Push queued rows, refresh cluster-wide spend. Rows stay queued if the actor fails."""
        if self.actor is None:
            return
        traffic = self._traffic_changed()
        scopes = [*self.budgets, *self.adapter_budgets]
        if not self.pending and not scopes and traffic is None:
            return                  # nothing to send, no spend to refresh: no idle chatter
        rows, self.pending = self.pending, []
        unsynced, self.unsynced = self.unsynced, SpendTotals()
        try:
            self.synced = await self.actor.push.remote(rows, scopes, self.local_targets, traffic)
            if traffic is not None:
                self._traffic_sent = traffic[1]
        except Exception as e:
            self.pending[:0] = rows
            self.unsynced.merge(unsynced.usd)
            log.warning("ledger actor push failed (%s); %d rows kept", type(e).__name__, len(self.pending))

    def _traffic_changed(self) -> tuple[str, dict] | None:
        if self.traffic is None:
            return None
        now = self.traffic()
        return None if now == self._traffic_sent else (self.process_id, now)

    async def activity(self, *, since: datetime | None, recent_n: int = 50) -> dict:
        """Per-route latency / TTFT percentiles, the newest requests, and (with the shared actor)
        the traffic counters summed over every replica (None here: the caller uses its own)."""
        if self.actor is None:
            return {**self.ledger.activity(since, recent_n), "traffic": None}
        await self.sync()
        return await self.actor.activity.remote(since, recent_n)

    async def query(self, *, group_by: str, since: datetime | None) -> list[dict]:
        if self.actor is None:
            return self.ledger.query(group_by, since)
        await self.sync()                               # a caller sees its own requests
        from gateway.costs.usage import GROUP_COLUMNS
        if group_by not in GROUP_COLUMNS:
            raise ValueError(f"group_by must be one of {sorted(GROUP_COLUMNS)}, not {group_by!r}")
        return await self.actor.query.remote(group_by, since)

    async def quarantined(self) -> list[str]:
        """Ledger files moved aside as unreadable (named by /v1/usage and `thawline usage`)."""
        if self.actor is None:
            return await asyncio.to_thread(self.ledger.quarantined)
        return await self.actor.quarantined.remote()

    async def series(self, *, column: str, since: datetime | None, bucket: str = "day") -> list[dict]:
        """Spend per `bucket` (day / hour) per ledger `column` (key_id, route, target, model)."""
        if column not in ("key_id", "route", "target", "model"):
            raise ValueError(f"column must be key_id, route, target or model, not {column!r}")
        if self.actor is None:
            return self.ledger.series(column, since, bucket)
        await self.sync()
        return await self.actor.series.remote(column, since, bucket)

    async def close(self) -> None:
        """Final push and flush: nothing recorded before a graceful shutdown is lost."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.actor is None:
            if self.ledger.fs is not None:
                self.ledger.flush()
            return
        await self.sync()
        await self.actor.flush.remote()
