"""Snapshot format, fsspec store with cache tiers, restore engine and vLLM loader plugin.

This package imports neither `gateway` nor `serve_apps` (dependencies go one way).
"""
