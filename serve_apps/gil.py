"""The GIL switch interval of Thawline's serving processes (gateway replicas, engine hosts).

A serving process runs its request loop on one thread and other Python threads beside it: Ray's
core worker and Serve's metric pushers in a replica; in an engine host also the adapter fetch (a
worker thread and the store client's IO loop). Whenever a thread wants the GIL while another
holds it, it waits for CPython's switch interval, 5 ms by default, at every hand-off:
- a gateway request ready to run waited up to 5 ms behind a Ray thread;
- an adapter's three S3 reads make dozens of hand-offs. With a CPU-bound loop beside them (as
  while the engine streams tokens) one fetch took about 265 ms at the median at 5 ms, 52 ms
  at 0.5 ms (bench/adapter_fetch_gil.py, bench/RESULTS.md).
0.5 ms bounds each wait; the cost is more frequent forced switches of a busy thread.
"""
from __future__ import annotations

import sys

GIL_SWITCH_INTERVAL_S = 0.0005


def use_serving_switch_interval() -> None:
    """Process-wide; idempotent."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
