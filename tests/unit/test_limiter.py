"""Limiter lease logic with an injected clock: broker pool + replica leases, no Ray."""
from __future__ import annotations

import math
import random

from gateway.limits.headers import fmt_duration, ratelimit_headers
from gateway.limits.lease import LocalLeases, Reservation
from gateway.limits.pool import QuotaPool

RPM = ("route:r", "requests")
TPM = ("route:r", "tokens")
CONC = ("route:r", "concurrent")


def _admit(pool: QuotaPool, leases: LocalLeases, holder: str, needs: dict, limits: dict, now: float):
    """One admission the way LimitClient does it, with the broker call inline."""
    res, deficits = leases.reserve(needs, now)
    if not deficits:
        return res
    req = {c: (limits[c], n, leases.want_extra(c, now)) for c, n in deficits.items()}
    g = pool.grant(holder, req, now)
    if not g.ok:
        leases.unreserve(res, now)
        return None
    assert leases.still_valid(res, now)
    assert leases.apply_grants(g.grants, g.window, g.reset_s, now, deficits, res, now)
    return res


def test_grant_is_all_or_nothing_and_never_exceeds_limit():
    pool = QuotaPool()
    g = pool.grant("a", {RPM: (5, 1, 10), CONC: (2, 1, 0)}, now=0.0)
    assert g.ok and g.grants[RPM] == 5 and g.grants[CONC] == 1   # lone holder may take all that is free
    g2 = pool.grant("b", {RPM: (5, 1, 0), CONC: (2, 1, 0)}, now=1.0)
    assert not g2.ok and [s.cell for s in g2.short] == [RPM]
    assert pool.cells[CONC].held == {"a": 1}                       # b got nothing, not even the free slot


def test_extra_is_a_fair_share_when_others_hold_quota():
    pool = QuotaPool()
    pool.grant("a", {RPM: (100, 1, 10)}, now=0.0)                  # a holds 11
    g = pool.grant("b", {RPM: (100, 1, 1000)}, now=0.0)
    assert g.grants[RPM] == 1 + (100 - 11 - 1) // 2


def test_new_window_resets_and_stale_returns_are_ignored():
    pool = QuotaPool(window_s=60)
    assert pool.grant("a", {RPM: (3, 3, 0)}, now=10.0).ok
    assert not pool.grant("b", {RPM: (3, 1, 0)}, now=59.9).ok
    g = pool.grant("b", {RPM: (3, 1, 0)}, now=60.0)
    assert g.ok and g.window == 1 and math.isclose(g.reset_s, 60.0)
    pool.release("a", {RPM: (0, 3)}, now=61.0)                     # window 0's leftovers: ignored
    assert pool.free(RPM, 61.0) == 2


def test_overage_charge_reduces_the_window():
    pool = QuotaPool()
    pool.grant("a", {TPM: (1000, 600, 0)}, now=0.0)
    pool.charge(TPM, 300, now=1.0)
    g = pool.grant("b", {TPM: (1000, 200, 0)}, now=2.0)
    assert not g.ok and g.short[0].free == 100


def test_request_larger_than_limit_is_never_retryable():
    g = QuotaPool().grant("a", {TPM: (100, 101, 0)}, now=0.0)
    assert not g.ok and math.isinf(g.short[0].reset_s)


def test_local_lease_expires_no_later_than_the_window_end():
    leases = LocalLeases()
    res = Reservation()
    # Sent at local t=100, broker says 5 s left in window 7: valid locally until 105.
    assert leases.apply_grants({RPM: 4}, 7, 5.0, 100.0, {RPM: 1}, res, now=100.2)
    assert res.rate == {RPM: (7, 1)}
    r2, d2 = leases.reserve({RPM: 1}, now=104.9)
    assert not d2 and r2.rate == {RPM: (7, 1)}
    r3, d3 = leases.reserve({RPM: 1}, now=105.0)
    assert d3 == {RPM: 1} and not r3.rate
    # A reply overtaken by the window end adds nothing.
    assert not leases.apply_grants({RPM: 4}, 7, 0.5, 200.0, {}, Reservation(), now=200.6)


def test_token_settlement_refunds_and_charges_overage():
    pool, leases = QuotaPool(), LocalLeases()
    res = _admit(pool, leases, "a", {TPM: 500}, {TPM: 1000}, now=1.0)
    (w, n), = res.rate.values()
    assert n == 500
    spare = leases.local_avail(TPM, 2.0)                            # the extra leased ahead
    assert spare == 500                                             # = recent demand
    leases.settle_tokens(TPM, w, 500, 200, now=2.0)                 # used less: 300 back locally
    assert leases.local_avail(TPM, 2.0) == spare + 300
    leases.settle_tokens(TPM, w, 100, 1100, now=2.0)                # used 1000 more than charged
    assert leases.local_avail(TPM, 2.0) == 0 and leases.pop_charges() == {TPM: 200}


def test_idle_and_forced_returns():
    pool, leases = QuotaPool(), LocalLeases()
    res = _admit(pool, leases, "a", {CONC: 1, RPM: 1}, {CONC: 3, RPM: 10}, now=0.0)
    leases.release_slots(res.slots, now=0.5)
    assert leases.returnable(0.6, idle_s=1.0) == {}                 # not idle long enough
    out = leases.returnable(0.6, idle_s=1.0, force={CONC})
    assert out == {CONC: (0, 1)}
    pool.release("a", out, now=0.6)
    assert pool.free(CONC, 0.6) == 3


def test_many_replicas_never_overshoot_and_a_lone_client_gets_the_whole_limit():
    """Random interleavings of 4 replicas: per window, admitted <= limit; the held sum never
    exceeds the limit; and after the others hand back idle quota one replica reaches the limit."""
    rng = random.Random(7)
    limits = {RPM: 50, TPM: 5000, CONC: 6}
    pool = QuotaPool(window_s=60)
    replicas = {f"r{i}": LocalLeases(horizon_s=0.5) for i in range(4)}
    inflight: list[tuple[str, Reservation]] = []
    admitted: dict[int, int] = {}
    now = 0.0
    for _ in range(4000):
        now += rng.uniform(0, 0.1)
        h = rng.choice(list(replicas))
        leases = replicas[h]
        if inflight and rng.random() < 0.45:
            hh, res = inflight.pop(rng.randrange(len(inflight)))
            replicas[hh].release_slots(res.slots, now)
            for c, (w, n) in res.rate.items():
                if c == TPM:
                    replicas[hh].settle_tokens(c, w, n, rng.randint(0, n), now)
        elif rng.random() < 0.1:
            pool.release(h, leases.returnable(now, idle_s=1.0), now)
        else:
            res = _admit(pool, leases, h, {RPM: 1, TPM: rng.randint(1, 400), CONC: 1}, limits, now)
            if res is not None:
                w = int(now // 60)
                admitted[w] = admitted.get(w, 0) + 1
                inflight.append((h, res))
        for c, lim in limits.items():
            st = pool.cells.get(c)
            if st is not None:
                assert sum(st.held.values()) + st.debt <= lim
        assert sum(1 for _ in inflight) <= limits[CONC]
    assert admitted and max(admitted.values()) <= limits[RPM]
    assert max(admitted.values()) == limits[RPM]                    # demand was high: limit reached

    # Lone client: everyone else hands back what it holds, then r0 alone uses the whole window.
    for hh, res in inflight:
        replicas[hh].release_slots(res.slots, now)
    now = (int(now // 60) + 1) * 60.0
    for h, leases in replicas.items():
        pool.release(h, leases.returnable(now + 5, idle_s=1.0), now + 5)
    n = 0
    while _admit(pool, replicas["r0"], "r0", {RPM: 1}, limits, now + 5 + n * 0.01) is not None:
        n += 1
    assert n == limits[RPM]


def test_headers_format():
    assert fmt_duration(0.02) == "20ms" and fmt_duration(6.2) == "7s" and fmt_duration(360) == "6m0s"
    h = ratelimit_headers((60, 59, 1.0), None)
    assert h == {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
                 "x-ratelimit-reset-requests": "1s"}


def test_forgotten_leases_settle_to_nothing():
    """After the broker presumed this replica dead (and took its quota back), requests admitted
    before must not free slots or refund tokens into the new leases."""
    pool, leases = QuotaPool(), LocalLeases()
    old = _admit(pool, leases, "a", {CONC: 1, TPM: 100}, {CONC: 2, TPM: 1000}, now=0.0)
    pool.drop_holder("a")
    leases.forget_all()
    new = _admit(pool, leases, "a", {CONC: 1, TPM: 100}, {CONC: 2, TPM: 1000}, now=1.0)
    leases.release_slots(old.slots, 1.1, old.epoch)
    (w, n), = [v for c, v in old.rate.items() if c == TPM]
    before = leases.local_avail(TPM, 1.1)
    leases.settle_tokens(TPM, w, n, 0, 1.1, old.epoch)
    assert leases.local_avail(TPM, 1.1) == before
    assert leases.slots[CONC].in_use == 1                              # `new` still holds its slot
    assert new.epoch == leases.epoch != old.epoch


# -- issue 11 ------------------------------------------------------------------------------------
USD = ("key:k", "usd_day")


def _admit_reclaiming(pool: QuotaPool, replicas: dict, holder: str, needs: dict, limits: dict, now: float):
    """One admission the way LimitClient + LimitBroker do it: local all-or-nothing reserve; on a
    deficit hand the local remainder back with the broker call; when short, the broker makes
    the other holders hand back their unreserved quota (their watch()), then tries again."""
    leases = replicas[holder]
    res, deficits = leases.reserve(needs, now)
    if not deficits:
        return res
    pool.release(holder, leases.take_avail(list(deficits), now), now)
    req = {c: (limits[c], n, leases.want_extra(c, now)) for c, n in deficits.items()}
    g = pool.grant(holder, req, now)
    if not g.ok:
        for h in pool.holders_of([s.cell for s in g.short], exclude=holder):
            pool.release(h, replicas[h].returnable(now, idle_s=math.inf, force={s.cell for s in g.short}), now)
        g = pool.grant(holder, req, now)
    if not g.ok:
        leases.unreserve(res, now)
        return None
    assert leases.apply_grants(g.grants, g.window, g.reset_s, now, deficits, res, now, g.windows)
    return res


def test_a_short_reserve_takes_nothing_so_its_remainder_stays_returnable():
    """Issue 11: a partial take sat in the pending admission, where the broker's reclaim
    (returnable) could not see it; two replicas each holding part of the last request's quota
    then both gave up."""
    leases = LocalLeases()
    assert leases.apply_grants({TPM: 150}, 0, 60.0, 0.0, {}, Reservation(), now=0.0)
    res, d = leases.reserve({TPM: 100}, now=1.0)
    assert not d and res.rate == {TPM: (0, 100)}
    res2, d2 = leases.reserve({TPM: 100}, now=1.0)
    assert d2 == {TPM: 100} and res2.rate == {}                     # all or nothing
    assert leases.returnable(1.0, idle_s=math.inf, force={TPM}) == {TPM: (0, 50)}


def test_two_replicas_holding_remainders_admit_exactly_what_fits():
    for seed in range(20):
        rng = random.Random(seed)
        pool = QuotaPool()
        replicas = {"a": LocalLeases(), "b": LocalLeases()}
        admitted = 0
        now = 1.0
        for _ in range(30):                                         # 30 requests of 100, tpm 1000
            now += 0.001
            if _admit_reclaiming(pool, replicas, rng.choice("ab"), {TPM: 100}, {TPM: 1000}, now) is not None:
                admitted += 1
        assert admitted == 10, seed


def test_budget_reserves_worst_case_and_a_burst_overshoots_by_at_most_one_request():
    """Issue 11: nothing was reserved at admission, so 30 concurrent requests all passed a budget
    check that saw $0 spent. Now each reserves its worst case; a budget admits while anything is
    free, so a burst crosses it by at most one request's worst case."""
    pool = QuotaPool()
    replicas = {"a": LocalLeases(), "b": LocalLeases()}
    limit, worst, cost = 1000, 370, 170
    held = []
    for i in range(30):                                             # 30 concurrent, none settled yet
        h = "ab"[i % 2]
        res = _admit_reclaiming(pool, replicas, h, {USD: worst}, {USD: limit}, 10.0 + i * 1e-3)
        if res is not None:
            held.append((h, res))
    assert len(held) == 3                                           # 1110 <= 1000 + 370; never 30
    for h, res in held:                                             # settle at the real cost
        (w, n), = res.rate.values()
        replicas[h].settle_cost(USD, w, n, cost, 11.0)
        pool.consume(h, replicas[h].pop_consumed(), 11.0)
    st = pool.cells[USD]
    assert st.spent() == 3 * cost
    # Later requests: admitted while anything is free, then refused; spend <= limit + one worst case.
    n_more = 0
    for i in range(30):
        h = "ab"[i % 2]
        res = _admit_reclaiming(pool, replicas, h, {USD: worst}, {USD: limit}, 12.0 + i * 1e-3)
        if res is None:
            continue
        n_more += 1
        (w, n), = res.rate.values()
        replicas[h].settle_cost(USD, w, n, cost, 12.0 + i * 1e-3)
        pool.consume(h, replicas[h].pop_consumed(), 12.0 + i * 1e-3)
    assert n_more == 3 and limit < st.spent() <= limit + worst       # 6 x 170 = 1020
    assert _admit_reclaiming(pool, replicas, "a", {USD: 1}, {USD: limit}, 13.0) is None


def test_settle_cost_moves_the_cost_to_spend_and_refunds_the_rest():
    pool, leases = QuotaPool(), LocalLeases()
    replicas = {"a": leases}
    res = _admit_reclaiming(pool, replicas, "a", {USD: 370}, {USD: 1000}, 10.0)
    (w, n), = res.rate.values()
    assert n == 370
    avail = leases.local_avail(USD, 10.0)
    leases.settle_cost(USD, w, 370, 170, 10.5)
    assert leases.local_avail(USD, 10.5) == avail + 200
    pool.consume("a", leases.pop_consumed(), 10.5)
    st = pool.cells[USD]
    assert st.debt == 170 and st.spent() == 170
    pool.release("a", leases.return_all(11.0), 11.0)                # leases handed back, spend stays
    assert st.free() == 1000 - 170 and sum(st.held.values()) == 0
    # The cost ledger's view of spend is a floor: max, never a sum (no double counting).
    g = pool.grant("b", {USD: (1000, 100, 0)}, 12.0, floors={USD: 500})
    assert g.ok and st.spent() == 500 and st.free() == 1000 - 500 - 100
    g = pool.grant("b", {USD: (1000, 100, 0)}, 12.0, floors={USD: 950})
    assert not g.ok and g.short[0].cell == USD                      # spend + in flight reached it
