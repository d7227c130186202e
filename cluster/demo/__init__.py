"""`make demo`: the embedded default, run as `python -m cluster.demo` (see __main__.py).

Repo tooling, not product: it drives loopback fake providers from testkit/, so, like testkit, it
runs from a checkout and is left out of the wheel (pyproject.toml's packages.find exclude)."""
