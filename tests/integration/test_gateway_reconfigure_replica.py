"""The Serve replica's reconfigure with a user_config that fails validation: it is refused with an
error log (not raised: Serve would restart the replica into the same failure) and the gateway keeps
its old configuration, whole. The replica object is
driven in-process (its class, without a cluster); tests/unit/test_gateway_reconfigure_whole.py has
the Gateway's own all-or-nothing checks."""
from __future__ import annotations

import asyncio
import logging
import uuid

from tests.unit.test_gateway_key_admin import cfg
from tests.unit.test_gateway_reconfigure_whole import _changed, _gateway


def test_an_invalid_user_config_in_the_replica_changes_nothing(caplog):
    from serve_apps.gateway import GatewayIngress
    raw = cfg(f"memory://ks-{uuid.uuid4().hex[:8]}")
    cls = GatewayIngress.func_or_class
    ingress = cls.__new__(cls)
    ingress._gateway = g = _gateway(raw)
    ingress._listener = None      # as __init__ leaves it without `listen`

    async def main():
        bad = _changed(raw)
        bad["routes"]["r3"]["targets"][0]["provider"] = "nope"
        before = (g.cfg, dict(g.providers), set(g.routes))
        with caplog.at_level(logging.ERROR, logger="thawline.gateway"):
            await ingress.reconfigure({"config": bad})
        assert (g.cfg, dict(g.providers), set(g.routes)) == before
        assert "refused" in caplog.text and "nope" in caplog.text
        await g.shutdown()
    asyncio.run(main())
