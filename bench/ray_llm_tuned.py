"""The tuned baseline's Ray Serve LLM callback (bench/cold_start_apps.py baseline_app, tuned=True).

Its own module, imported lazily: it imports Ray (Ray Serve LLM has no public export of the
callback base class; `LLMConfig.callback_config.callback_class` documents a CallbackBase subclass).
"""
from __future__ import annotations

from ray.llm._internal.common.callbacks.base import CallbackBase


class SkipNodeInit(CallbackBase):
    """Ray Serve LLM's own hook for skipping node initialization: `on_before_node_init` may clear
    `ctx.run_init_node`, and then `VLLMEngine.start` runs no `initialize_node` (the per-node
    download task, in a fresh worker with the config's runtime_env) and vLLM reads the model
    source path as given: the right thing for a directory every node already has."""

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False
