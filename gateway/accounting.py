"""What one request used and cost, written to the ledger: usage per attempt (the provider's, or
counted locally where it reported none, marked `estimated`) and one ledger row per attempt that
used tokens (a continued stream bills both targets), else one row for the request."""
from __future__ import annotations

import time
from typing import Any

from gateway.costs.schema import LedgerRow
from gateway.costs.tokens import count_text_tokens, estimate_prompt_tokens
from gateway.dispatch import Trace
from gateway.providers.base import CHAT, Response, Usage
from gateway.routes import CompiledRoute

Records = list[tuple[Any, Usage | None, str]]   # (target, usage, status) per attempt


def text_of(body: dict, endpoint: str) -> str:
    """Response text, for local token counts when a provider reports no usage."""
    out = []
    for c in body.get("choices") or []:
        if endpoint == CHAT:
            out.append(((c.get("message") or {}).get("content")) or "")
        else:
            out.append(c.get("text") or "")
    return "".join(out)


class Accounting:
    """One per gateway; `costs` is the CostTracker (None: nothing is recorded, tokens still counted)."""

    def __init__(self, costs: Any):
        self.costs = costs

    @staticmethod
    def prompt_tokens(body: dict, endpoint: str) -> int:
        return estimate_prompt_tokens(body, endpoint=endpoint)

    def call_records(self, trace: Trace, resp: Response | None, body: dict, endpoint: str) -> Records:
        """(target, usage, status) per attempt of a non-streamed call. The answering attempt's
        usage is counted locally if its provider reported none."""
        recs = []
        for r in trace.records:
            u = r.usage
            if u is None and r.status == "ok" and resp is not None:
                u = Usage(self.prompt_tokens(body, endpoint), count_text_tokens(text_of(resp.body, endpoint)),
                          0, True)
                if isinstance(resp.body.get("usage"), (dict, list, str, int, float)):
                    # the upstream's usage was unbelievable (see Usage.from_openai): the
                    # client gets the counted one, never negative or non-numeric counts
                    resp.body["usage"] = u.to_openai()
                    resp.raw = None
            recs.append((r.target, u, r.status))
        return recs

    def stream_records(self, trace: Trace, body: dict, endpoint: str, status: str) -> Records:
        """(target, usage, status) per attempt; usage counted locally where none was reported
        but output was produced (a cut stream's partial answer is billed too)."""
        out = []
        for r in trace.records:
            u = r.usage
            if u is None and (r.text or r.status == "ok"):
                u = Usage(self.prompt_tokens(body, endpoint), count_text_tokens(r.text), 0, True)
            st = r.status if status == "ok" else ("cancelled" if status == "cancelled" else "error")
            out.append((r.target, u, st))
        return out

    def record(self, *, key_id: str, route: CompiledRoute, trace: Trace, stream: bool, status: str,
               recs: Records) -> int:
        """Writes one ledger row per attempt that used tokens (or one error row); returns tokens."""
        if self.costs is None:
            return sum((u.prompt_tokens + u.completion_tokens) for _, u, _ in recs if u)
        latency = (time.perf_counter() - trace.started_at) * 1000.0
        total = 0
        rows = 0
        for target, usage, st in recs:
            if usage is None:
                continue
            trace.cost_usd += self.costs.record(LedgerRow(
                key_id=key_id, route=route.alias, target=target.provider_name, model=target.model,
                tokens_in=usage.prompt_tokens, tokens_out=usage.completion_tokens, tokens_cached=usage.cached_tokens,
                latency_ms=latency, ttft_ms=trace.ttft_ms, status=st, attempts=trace.attempts,
                estimated=usage.estimated, stream=stream, adapter=route.adapter)).cost_usd
            total += usage.prompt_tokens + usage.completion_tokens
            rows += 1
        if rows == 0:
            t = trace.target
            self.costs.record(LedgerRow(
                key_id=key_id, route=route.alias, target=t.provider_name if t else "", model=t.model if t else "",
                latency_ms=latency, ttft_ms=trace.ttft_ms, status=status, attempts=trace.attempts, stream=stream,
                adapter=route.adapter))
        return total
