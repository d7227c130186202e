"""A claimed warm-pool host whose replica dies without stopping it is stopped by the pool.

Real Ray, the real WarmPool actor and a real pooled EngineHost (vLLM imported, forkserver up).
The "replica" is a named actor that claims the host the way LLMServer does; killing it with
ray.kill is the crash (no close() runs).
"""
from __future__ import annotations

import os

import pytest

from serve_apps.llm_deploy import wait_for

pytestmark = pytest.mark.timeout(600)

REAP_S = 0.5


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             namespace="thawline-reaper-test", _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


def _host_alive(ray, host) -> bool:
    try:
        ray.get(host.describe.remote(), timeout=30)
        return True
    except ray.exceptions.RayActorError:
        return False


def test_claimed_host_is_stopped_once_its_owner_dies_and_not_before(ray_local):
    """Crash: the pool stops the orphaned host. Clean stop: the pool only forgets the claim."""
    ray = ray_local
    from serve_apps.llm_warm_pool import WarmPool

    @ray.remote(num_cpus=0)
    class Replica:
        async def claim(self, pool):
            ctx = ray.get_runtime_context()
            return await pool.claim.remote(300, (ctx.get_actor_name(), ctx.namespace))

        async def close(self, host):  # what LLMServer does when Serve stops it
            from serve_apps.llm_warm_pool import stop_host

            await stop_host(host)

    node = ray.get_runtime_context().get_node_id()
    pool = ray.remote(WarmPool).options(num_cpus=0, max_concurrency=100).remote(
        node, 1, refill_delay_s=3600, reap_interval_s=REAP_S)
    ray.get(pool.ensure.remote(1))
    replica = Replica.options(name="replica-under-test").remote()
    claimed = ray.get(replica.claim.remote(pool), timeout=300)  # waits for the host's imports
    assert claimed, "the pool handed out no host"
    host = claimed[0]

    # Owner alive: three reap rounds later the host still serves and is still tracked.
    first = ray.get(pool.stats.remote())
    assert first["owned"] == 1 and first["reaped"] == 0, first
    wait_for(lambda: ray.get(pool.stats.remote())["reap_rounds"] >= first["reap_rounds"] + 3, 30,
             "three reap rounds with the owner alive")
    assert _host_alive(ray, host)
    stats = ray.get(pool.stats.remote())
    assert stats["owned"] == 1 and stats["reaped"] == 0, stats

    # The replica crashes (no close()): the pool stops its host.
    ray.kill(replica, no_restart=True)
    wait_for(lambda: not _host_alive(ray, host), 60, "the orphaned host to be stopped")
    stats = ray.get(pool.stats.remote())
    assert stats["owned"] == 0 and stats["reaped"] == 1, stats

    # A replica that stops cleanly stops its own host; the pool then just forgets the claim.
    ray.get(pool.ensure.remote(1))
    polite = Replica.options(name="replica-stopping-cleanly").remote()
    host2 = ray.get(polite.claim.remote(pool), timeout=300)[0]
    ray.get(polite.close.remote(host2), timeout=60)
    ray.kill(polite, no_restart=True)
    wait_for(lambda: ray.get(pool.stats.remote())["owned"] == 0, 60, "the pool to forget the clean claim")
    assert not _host_alive(ray, host2)
    assert ray.get(pool.stats.remote())["reaped"] == 1, "a cleanly stopped host is not counted as reaped"
    ray.kill(pool)
