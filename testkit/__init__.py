"""Test and demo support that is not product and is not in the wheel: the Serve deploy harness,
loopback fake providers (fake_providers: hosted APIs; fake_llm: the LLM app's handle protocol),
a fake multi-node Ray cluster (fake_cluster), the Ray sandbox stopper (sandbox), loopback ports
(net). Product packages (snapshots, gateway, serve_apps, cluster's shipped code) never import it,
and it imports nothing from cluster; tests, benches and the demo may use it (checked by
tests/unit/test_layout.py)."""
