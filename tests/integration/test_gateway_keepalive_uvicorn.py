"""The keep-alive tests of test_gateway_stream_keepalive.py against the gateway served by uvicorn
in this process (a real HTTP server and ASGI `send`, no Ray): the same stream, byte for byte, as
a load balancer in front of a gateway replica's own port (direct ingress) sees it."""
from __future__ import annotations

import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from testkit.asgi_server import serve_asgi
from tests.integration.conftest_gateway import fake_providers  # noqa: F401
from tests.integration.test_gateway_stream_keepalive import (  # noqa: F401 - collected here with this module's `gw`
    _config, test_cold_stream_gets_headers_and_keepalives_before_the_first_token,
    test_failure_before_the_first_token_still_falls_back_after_early_headers, test_fast_stream_is_unchanged,
    test_final_failure_after_early_headers_ends_with_an_sse_error_event)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gw(fake_providers):  # noqa: F811
    with serve_asgi(Gateway(parse_config(_config(fake_providers)), limits=None, costs=None), lifespan="on") as base:
        yield base
