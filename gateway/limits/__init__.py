"""Per-route / per-key limits, exact across gateway replicas (see broker.py for the protocol)."""
