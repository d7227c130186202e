"""The demo's scripted session against a running gateway: cold request with its timeline, warm
request, streaming, fallback from a failing (fake) hosted provider, a rate-limited burst, the
cost ledger, and the same gateway through the openai SDK and the in-cluster handle.

Each function does one thing, prints it, and returns what it measured, so the demo's flow
(cluster/demo/__main__.py) reads as a list of steps.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.markup import escape
from rich.table import Table

from cluster.demo.stack import BURST_RPM, LLM_APP, MODEL
from cluster.demo.ui import console, note
from gateway.client import AsyncClient, Client, RateLimited
from gateway.cold_start_phases import TOTAL, ordered
from gateway.names import NAMESPACE, READINESS_ACTOR
from gateway.readiness import CACHED, COLD, PARKED, WARM
from gateway.response_headers import PREFIX

PROMPT = "The quick brown fox"


# ------------------------------------------------------------------------ cold-start timeline

@dataclass
class Timeline:
    t0: float = field(default_factory=time.perf_counter)
    events: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, text: str) -> None:
        self.events.append((time.perf_counter() - self.t0, text))

    def table(self, title: str) -> Table:
        t = Table(title=title)
        t.add_column("t (s)", justify="right")
        t.add_column("event")
        for at, text in sorted(self.events):
            t.add_row(f"{at:6.2f}", text)
        return t


class StateWatcher:
    """Polls Serve's replica states and the readiness board while a request is in flight and
    marks every change on the timeline (what an operator would see in `thawline status`)."""

    def __init__(self, timeline: Timeline, read: Callable[[], tuple[dict[str, int], str | None]],
                 interval_s: float = 0.2):
        self._tl, self._read, self._interval = timeline, read, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-watcher", daemon=True)
        self._last: tuple[Any, Any] | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                replicas, board = self._read()
            except Exception as exc:  # noqa: BLE001 - a failed poll is shown, not fatal
                replicas, board = {}, f"? ({type(exc).__name__})"
            snap = (tuple(sorted(replicas.items())), board)
            if snap != self._last:
                self._last = snap
                shown = ", ".join(f"{k.lower()}={v}" for k, v in sorted(replicas.items())) or "0 replicas"
                self._tl.mark(f"[cyan]serve[/]: {shown}; readiness board: {board or '-'}")
            self._stop.wait(self._interval)

    def __enter__(self) -> "StateWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


def _board():
    """The readiness board actor, or None: no replica has reported yet, so it does not exist."""
    import ray

    try:
        return ray.get_actor(READINESS_ACTOR, namespace=NAMESPACE)
    except ValueError:
        return None


def _board_get() -> dict:
    import ray

    board = _board()
    return {} if board is None else ray.get(board.get.remote(LLM_APP), timeout=5)


def read_llm_state() -> tuple[dict[str, int], str | None]:
    from cluster.demo.stack import replica_counts

    got = _board_get()
    board = f"{got['state']}, tier {got.get('tier')}" if got else None
    return replica_counts(LLM_APP), board


def last_cold_start() -> dict | None:
    import ray

    board = _board()
    return None if board is None else ray.get(board.last_cold_start.remote(LLM_APP), timeout=5)


def phases_table(cold: dict) -> Table | None:
    """The replica's own cold-start phases (gateway/cold_start_phases.py), in the order they ran,
    if it recorded them."""
    phases = cold.get("phases_s") or cold.get("phases")
    if not isinstance(phases, dict) or not phases:
        return None
    t = Table(title="Cold start, as the replica measured it")
    t.add_column("phase")
    t.add_column("seconds", justify="right")
    for name, secs in ordered(phases):
        t.add_row(name, f"{secs:.2f}")
    if TOTAL in phases:
        t.add_row(TOTAL, f"{float(phases[TOTAL]):.2f}")
    return t


# ------------------------------------------------------------------------------- the session

def wait_for_warm_pool(timeout_s: float = 300) -> float:
    """Seconds spent waiting until the node's warm pool has a host that imported vLLM: a deployed
    cluster does this when the node joins, long before a request; a cold request sent during
    the import would time the import, not the product's cold start."""
    import ray

    from cluster.demo.stack import wait_for
    from gateway.names import warm_pool_name

    t0 = time.perf_counter()
    name = warm_pool_name(ray.get_runtime_context().get_node_id())

    def ready() -> bool:
        try:
            return ray.get(ray.get_actor(name, namespace=NAMESPACE).stats.remote(), timeout=5)["ready"] >= 1
        except ValueError:
            return False
    wait_for(ready, timeout_s, "the node's warm pool to import vLLM")
    return time.perf_counter() - t0


def _tier_note(cold: dict | None, elapsed_s: float | None) -> None:
    tier = (cold or {}).get("tier") or "?"
    how = {PARKED: "a parked engine answered while a replica started and adopted it",
           CACHED: "a replica claimed a pre-imported host and started the engine from the snapshot",
           COLD: "the first replica booted from the source"}.get(tier, "")
    took = f" in {elapsed_s:.2f}s" if elapsed_s is not None else ""
    note(f"answered by tier [bold]{tier}[/]{took}: {how}")


def _watched_request(client: Client, title: str, then: Callable[[Timeline], None] | None = None):
    """One chat request with its timeline: Serve's replicas and the board's state and tier as
    they change while it is in flight (and during `then`, if given)."""
    tl = Timeline()
    before, board = read_llm_state()
    tl.mark(f"request sent to route [bold]{MODEL}[/] (engine replicas: {sum(before.values())}, board: {board or 'cold'})")
    with StateWatcher(tl, read_llm_state):
        r = client.chat(MODEL, PROMPT, max_tokens=8, temperature=0)
        tl.mark(f"[green]answer[/]: {escape(repr(r.text))} ({r.usage.completion_tokens if r.usage else '?'} tokens)")
        if then is not None:
            then(tl)
    console.print(tl.table(title))
    return r


def cold_request(client: Client) -> float:
    waited = wait_for_warm_pool()
    if waited > 1:
        note(f"waited {waited:.0f}s for the node's warm pool to import vLLM first (a cluster does that when a "
             "node joins, not on a request)")
    r = _watched_request(client, "Cold request timeline (scale from zero)")
    cold = last_cold_start()
    if cold:
        pt = phases_table(cold)
        if pt is not None:
            console.print(pt)
    hdrs = r.meta.thawline()
    if hdrs:
        note(escape("gateway headers: " + ", ".join(f"{PREFIX}{k}={v}" for k, v in sorted(hdrs.items()))))
    _tier_note(cold, r.meta.elapsed_s)
    note("the tiny model's weights are random by design (generated here, nothing downloaded): its text is "
         "gibberish, the same for the same prompt")
    return r.meta.elapsed_s or 0.0


def parked_request(client: Client, timeout_s: float = 180) -> float:
    """Idle until the replica scales to zero and parks its engine, then a request at zero replicas:
    the parked tier."""
    from cluster.demo.stack import replica_counts, wait_for

    t0 = time.perf_counter()
    wait_for(lambda: sum(replica_counts(LLM_APP).values()) == 0 and _board_get().get("tier") == PARKED,
             timeout_s, "the replica to scale to zero and park its engine")
    note(f"idle {time.perf_counter() - t0:.0f}s: the replica scaled to zero and parked its engine in the warm pool "
         "(no Ray CPU held; weights and KV cache stay in host memory on CPU)")
    def adopted(tl: Timeline) -> None:
        wait_for(lambda: _board_get().get("state") == WARM, 60, "the new replica to adopt the parked engine")
        tl.mark("a replica is warm again, on the same engine (no second engine start)")

    r = _watched_request(client, "Request at zero replicas, parked engine", then=adopted)
    _tier_note(last_cold_start(), r.meta.elapsed_s)
    return r.meta.elapsed_s or 0.0


def warm_request(client: Client) -> float:
    r = client.chat(MODEL, PROMPT, max_tokens=8, temperature=0)
    console.print(f"  warm answer {escape(repr(r.text))} in [bold]{r.meta.elapsed_s:.2f}s[/]")
    return r.meta.elapsed_s or 0.0


def streaming(client: Client) -> float | None:
    console.print("  [dim]streaming:[/] ", end="")
    stream = client.chat(MODEL, "Once upon a time", stream=True, max_tokens=12, temperature=0)
    for chunk in stream:
        console.print(chunk.text, end="", markup=False, highlight=False)
    console.print()
    ttft = stream.meta.first_chunk_s
    usage = stream.usage
    note(f"first token after {ttft:.2f}s; usage from the final chunk: "
         f"{usage.prompt_tokens if usage else '?'} in / {usage.completion_tokens if usage else '?'} out")
    return ttft


def fallback(client: Client, fake_state: Any) -> dict[str, str]:
    before = fake_state.count("openai", "gpt-4o-mini-500")
    r = client.chat("resilient", PROMPT, max_tokens=8, temperature=0)
    tried = fake_state.count("openai", "gpt-4o-mini-500") - before
    hdrs = r.meta.thawline()
    console.print(f"  route [bold]resilient[/]: hosted provider [yellow](loopback FAKE of an OpenAI-style API)[/] "
                  f"answered 500 x{tried}; served by: [green]{escape(hdrs.get('target', r.model or '?'))}[/]")
    console.print(f"  answer {escape(repr(r.text))}")
    if hdrs:
        note(escape("gateway headers: " + ", ".join(f"{PREFIX}{k}={v}" for k, v in sorted(hdrs.items()))))
    return hdrs


async def _burst(base_url: str, api_key: str, n: int) -> list[Any]:
    async with AsyncClient(base_url, api_key=api_key) as c:
        async def one(i: int):
            try:
                return await c.chat("burst", f"request {i}", max_tokens=4)
            except RateLimited as exc:
                return exc
        return await asyncio.gather(*(one(i) for i in range(n)))


def rate_limited_burst(base_url: str, api_key: str, n: int = 12) -> tuple[int, int]:
    results = asyncio.run(_burst(base_url, api_key, n))
    ok = [r for r in results if not isinstance(r, RateLimited)]
    limited = [r for r in results if isinstance(r, RateLimited)]
    t = Table(title=f"Burst of {n} concurrent requests on route `burst` (limit: {BURST_RPM} requests/min)")
    t.add_column("outcome")
    t.add_column("count", justify="right")
    t.add_column("detail")
    t.add_row("[green]200 served[/] (by the hosted FAKE)", str(len(ok)), "")
    retry = sorted({r.retry_after for r in limited if r.retry_after is not None})
    t.add_row("[red]429 RateLimited[/]", str(len(limited)),
              f"retry_after={retry[0]:.0f}s" if retry else "")
    console.print(t)
    return len(ok), len(limited)


def ledger(client: Client, admin_key: str, expect_routes: tuple[str, ...] = (MODEL, "resilient", "burst"),
           wait_s: float = 15.0) -> float:
    """The ledger by route and by target. A request is in the report as soon as its replica has
    synced it, but a local model's share of replica time is priced at the ledger's next flush or
    two, so wait (bounded) until every route the session used shows up with its cost."""
    from cluster.cli.ops.commands import usage_table

    deadline = time.monotonic() + wait_s
    while True:
        report = client.usage(group_by="route", admin_key=admin_key)
        priced = {r.get("group") for r in report.data if (r.get("cost_usd") or 0) > 0}
        missing = set(expect_routes) - priced
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    console.print(usage_table(report.data, "route"))
    if missing:
        note(f"not in the ledger (or not priced) yet after {wait_s:.0f}s: {', '.join(sorted(missing))}")
    by_target = client.usage(group_by="target", admin_key=admin_key)
    console.print(usage_table(by_target.data, "target"))
    return by_target.total_usd


def openai_sdk(base_url: str, api_key: str) -> str:
    from openai import OpenAI

    sdk = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    r = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=8)
    console.print(f"  openai SDK -> {escape(repr(r.choices[0].message.content))} "
                  f"(usage {r.usage.prompt_tokens}+{r.usage.completion_tokens})")
    return r.choices[0].message.content or ""


def _in_cluster_call(api_key: str) -> str:
    from gateway.client import Client as C

    return C.from_app("gateway", api_key=api_key).chat(MODEL, PROMPT, max_tokens=8, temperature=0).text


def in_cluster_handle(api_key: str) -> str | None:
    """The same call from code inside the cluster (a Ray task), through the gateway deployment's
    DeploymentHandle: no HTTP hop."""
    import ray

    try:
        text = ray.get(ray.remote(_in_cluster_call).options(num_cpus=0).remote(api_key), timeout=120)
    except Exception as exc:  # noqa: BLE001 - shown as a skipped part of the demo, with the reason
        msg = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
        console.print(f"  [yellow]skipped[/]: the handle transport failed: {escape(msg)}")
        return None
    console.print(f"  Client.from_app('gateway') inside a Ray task -> {escape(repr(text))}")
    return text
