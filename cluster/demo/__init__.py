"""`make demo`: the embedded default, run as `python -m cluster.demo` (see __main__.py)."""
