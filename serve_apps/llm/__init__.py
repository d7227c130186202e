"""The LLM app: `import_path: serve_apps.llm:app` (one scale-to-zero model per app).

    builder.py      app / build_app: LLMRouter (ingress, always on) + LLMServer (engine, from zero)
    args.py         the `args:` schema and the pure Serve-options logic
    router.py       LLMRouter: waits for a replica within the cold-path budget, forwards
    server.py       LLMServer: one replica = one engine host (claimed from the warm pool or local)
    engine_host.py  EngineHost: vLLM AsyncLLM + OpenAI serving classes, started from a snapshot
    spec.py         EngineSpec: what a replica asks its engine host to start (pure)
    warm_pool.py    per-node pool of pre-imported engine hosts; claims.py its pure bookkeeping
    forkserver.py   preloaded forkserver for vLLM's EngineCore
    first_boot.py   snapshot on first boot: which snapshot to restore, or the source to boot
    timeline.py     the cold-start log line and process clock (phases: gateway/cold_start_phases.py)
    sse.py          the app's SSE framing (pure)

`app` and `build_app` are loaded on first use, so the pure modules (args, claims, spec,
timeline, sse) import without Ray.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "build_app"):
        import importlib

        return getattr(importlib.import_module("serve_apps.llm.builder"), name)
    raise AttributeError(f"module 'serve_apps.llm' has no attribute {name!r}")
