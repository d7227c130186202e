"""ClaimBook: which warm-pool engine hosts are claimed, by which replica, and which are orphaned.

Pure bookkeeping (no Ray): the pool actor (warm_pool.WarmPool) supplies the liveness check,
so the ownership rules are unit-tested with a fake one (tests/unit/test_llm_host_claims.py).

A claim is (host handle, owner actor id). A round of `orphans(is_alive)` returns the claims whose
owner is dead; the pool then either finds the host already stopped (`forget`: the replica shut it
down on a clean exit) or stops it itself (`reaped`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(eq=False, slots=True)
class Claim:
    host: Any        # the EngineHost actor handle
    owner: str       # the claiming replica's actor id (hex)


class ClaimBook:
    def __init__(self) -> None:
        self._claims: list[Claim] = []
        self.rounds = 0      # liveness rounds run (tests wait on it)
        self.reaped_count = 0

    def __bool__(self) -> bool:
        return bool(self._claims)

    def add(self, host: Any, owner: str) -> Claim:
        if not owner:
            raise ValueError("a claim needs the owner's actor id")
        claim = Claim(host, owner)
        self._claims.append(claim)
        return claim

    def all(self) -> list[Claim]:
        return list(self._claims)

    def orphans(self, is_alive: Callable[[str], bool]) -> list[Claim]:
        """Claims whose owner is dead. Each distinct owner is checked once per round; an owner
        whose check raises counts as alive this round (a busy GCS must not kill engines)."""
        self.rounds += 1
        verdict: dict[str, bool] = {}
        out = []
        for c in self._claims:
            if c.owner not in verdict:
                try:
                    verdict[c.owner] = bool(is_alive(c.owner))
                except Exception:  # noqa: BLE001 - unknown is alive; the next round asks again
                    verdict[c.owner] = True
            if not verdict[c.owner]:
                out.append(c)
        return out

    def forget(self, claim: Claim) -> None:
        """The owner stopped its host itself: drop the claim, not counted as reaped."""
        self._claims.remove(claim)

    def reaped(self, claim: Claim) -> None:
        """The pool stopped an orphaned host."""
        self._claims.remove(claim)
        self.reaped_count += 1

    def stats(self) -> dict:
        return {"owned": len(self._claims), "reaped": self.reaped_count, "reap_rounds": self.rounds}
