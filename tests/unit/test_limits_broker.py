"""The limits broker's protocol, driven directly (a plain class: Ray is applied only when
gateway.limits.broker.get_broker creates the named actor), on an event loop with a fake clock."""
from __future__ import annotations

import asyncio

from gateway.limits.broker import LimitBroker


class Clock:
    def __init__(self, t: float = 60_000.5):
        self.t = t

    def __call__(self) -> float:
        return self.t


SLOTS = ("route:r", "concurrent")
RPM = ("route:r", "requests")


async def test_a_lone_holder_gets_its_need_plus_extra_and_stats_count_the_calls():
    b = LimitBroker(clock=Clock())
    res = await b.acquire("A", {SLOTS: (4, 1, 2)})
    assert res["ok"] and res["grants"] == {SLOTS: 3} and res["free"] == {SLOTS: 1}
    st = await b.stats()
    assert st["cells"]["route:r|concurrent"]["held"] == {"A": 3}
    assert st["calls"] == {"acquire": 1, "watch": 0, "denied": 0} and st["holders"] == ["A"]


async def test_a_short_acquire_waits_until_the_asked_holder_hands_back():
    b = LimitBroker({"max_wait_s": 2.0}, clock=Clock())
    assert (await b.acquire("A", {SLOTS: (2, 1, 1)}))["grants"] == {SLOTS: 2}   # A parks the whole limit
    watch_a = asyncio.create_task(b.watch("A", {}, {}, 5.0))                  # A's long-poll
    await asyncio.sleep(0)
    acq_b = asyncio.create_task(b.acquire("B", {SLOTS: (2, 1, 0)}))
    cells, seq = await asyncio.wait_for(watch_a, 1)       # the broker woke A: hand SLOTS back
    assert cells == [SLOTS] and seq == 1
    await asyncio.sleep(0.01)
    assert not acq_b.done(), "B waits for A's answer instead of failing at once"
    await b.watch("A", {SLOTS: (0, 1)}, {}, 0.01, ack=seq)                   # A returns its unused slot
    res = await asyncio.wait_for(acq_b, 1)
    assert res["ok"] and res["grants"] == {SLOTS: 1}
    held = (await b.stats())["cells"]["route:r|concurrent"]["held"]
    assert held == {"A": 1, "B": 1}, "never more held than the limit"


async def test_a_holder_that_does_not_answer_in_time_means_a_429_not_an_overshoot():
    b = LimitBroker(clock=Clock())
    await b.acquire("A", {SLOTS: (1, 1, 0)})
    res = await b.acquire("B", {SLOTS: (1, 1, 0)}, wait_s=0.05)
    assert not res["ok"] and res["short"][0][0] == SLOTS
    assert (await b.stats())["calls"]["denied"] == 1
    assert b.reclaim == {"A": {SLOTS}}, "A is still asked, for its next watch"


async def test_rate_windows_follow_the_injected_wall_clock():
    clock = Clock(60_000.0)                          # the start of a window (window_s=60)
    b = LimitBroker(clock=clock)
    assert (await b.acquire("A", {RPM: (1, 1, 0)}))["ok"]
    clock.t += 30
    res = await b.acquire("A", {RPM: (1, 1, 0)}, wait_s=0)
    assert not res["ok"] and res["short"][0][3] == 30.0          # reset_s: to the window's end
    clock.t += 30                                                # the next minute
    assert (await b.acquire("A", {RPM: (1, 1, 0)}, wait_s=0))["ok"]


async def test_a_holder_not_heard_from_is_dropped_and_told_when_it_comes_back():
    clock = Clock()
    b = LimitBroker({"holder_ttl_s": 10.0}, clock=clock)
    assert (await b.acquire("dead", {SLOTS: (1, 1, 0)}))["ok"]
    assert not (await b.acquire("live", {SLOTS: (1, 1, 0)}, wait_s=0))["ok"]
    clock.t += 11                                   # "dead" never called again: past its TTL
    assert (await b.acquire("live", {SLOTS: (1, 1, 0)}, wait_s=0))["ok"]
    assert await b.watch("dead", {}, {}, 0.1, 0) == (["*"], 0)   # it was only stalled: drop all
    assert "dead" not in b.dropped


async def test_release_with_drop_forgets_the_holder_and_charges_count():
    clock = Clock(60_000.0)
    b = LimitBroker(clock=clock)
    await b.acquire("A", {SLOTS: (2, 1, 1), RPM: (10, 1, 0)})
    await b.release("A", {SLOTS: (0, 2)}, charges={RPM: 4}, drop=True)
    st = await b.stats()
    assert st["cells"]["route:r|concurrent"]["held"] == {}
    assert st["cells"]["route:r|requests"]["debt"] == 4 and st["cells"]["route:r|requests"]["free"] == 6
    assert "A" not in b.last_seen
