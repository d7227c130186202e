"""Test and demo support that is not product: generated test models, the Serve deploy harness,
loopback fake providers (fake_providers: hosted APIs; fake_llm: the LLM app's handle protocol),
the Ray sandbox stopper (sandbox), loopback ports (net). Product packages (snapshots, gateway,
serve_apps, cluster's operator code) never import it; tests, benches and the demo may (checked
by tests/unit/test_layout.py)."""
