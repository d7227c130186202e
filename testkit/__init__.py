"""Test and demo support that is not product: generated test models, the Serve deploy harness,
loopback fake providers. Product packages (snapshots, gateway, serve_apps, cluster's operator
code) never import it; tests, benches and the demo may (checked by tests/unit/test_layout.py)."""
