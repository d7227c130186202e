"""gateway/names.py: the one owner of cross-process names, and the one way a named actor is made
(checked against a stand-in `ray` module: the unit tier never imports Ray)."""
from __future__ import annotations

import hashlib
import sys
import types

from gateway import names


def test_names_are_the_ones_every_process_agrees_on():
    assert names.NAMESPACE == "thawline" and names.READINESS_ACTOR == "thawline-readiness"
    assert names.LIMITS_ACTOR == "thawline-limits"
    url = "s3://bucket/ledger"
    assert names.ledger_actor_name(url) == "thawline-ledger-" + hashlib.sha256(url.encode()).hexdigest()[:10]
    assert names.ledger_actor_name(None) == names.ledger_actor_name("memory") != names.ledger_actor_name(url)
    assert names.breakers_actor_name("gateway") == "thawline-breakers-gateway"
    assert names.warm_pool_name("abc") == "thawline-warm-pool-abc"
    assert names.ADMIN_KEY_ENV == "THAWLINE_ADMIN_KEY"


class _FakeRay(types.ModuleType):
    def __init__(self):
        super().__init__("ray")
        self.calls = []

    def remote(self, cls):
        calls = self.calls

        class _ActorClass:
            def options(self, **opts):
                def remote(*args):
                    calls.append((cls, opts, args))
                    return f"handle:{opts['name']}"
                return types.SimpleNamespace(remote=remote)
        return _ActorClass()


def test_get_or_create_actor_applies_ray_at_creation_detached_get_if_exists(monkeypatch):
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)

    class Plain:
        pass

    assert names.get_or_create_actor(Plain, "thawline-x", 1, "two", max_restarts=-1) == "handle:thawline-x"
    assert names.get_or_create_actor(Plain, "y", namespace="other", lifetime=None, num_cpus=1) == "handle:y"
    (c1, o1, a1), (_, o2, _) = fake.calls
    assert c1 is Plain and a1 == (1, "two")
    assert o1 == {"name": "thawline-x", "namespace": "thawline", "get_if_exists": True, "lifetime": "detached",
                  "num_cpus": 0, "max_restarts": -1}
    assert o2["namespace"] == "other" and o2["lifetime"] is None and o2["num_cpus"] == 1
