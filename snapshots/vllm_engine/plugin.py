"""vLLM general plugin (entry point group `vllm.general_plugins`, see pyproject.toml).

vLLM calls `register()` in every process it starts (API process, EngineCore, each TP worker), so
the `thawline` load formats exist wherever a model is loaded, without patching vLLM's files, and
the adapter resolver (lora_resolver.py) is registered where the environment names an adapter store.
It may be called several times per process; registration is idempotent.
"""
from __future__ import annotations

LOAD_FORMAT = "thawline"
CAPTURE_FORMAT = "thawline_capture"

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    # Imported here, not at module top: the entry point is loaded in processes that may never
    # load a model, and the loaders pull in vLLM's model-loader stack. The format names above
    # stay importable without vLLM (snapshots/vllm_engine/start.py and capture.py use them).
    from vllm.model_executor.model_loader import register_model_loader

    from snapshots.vllm_engine.capture_loader import ThawlineCaptureLoader
    from snapshots.vllm_engine.loader import ThawlineLoader

    register_model_loader(LOAD_FORMAT)(ThawlineLoader)
    register_model_loader(CAPTURE_FORMAT)(ThawlineCaptureLoader)
    import os

    from snapshots.vllm_engine import cpu_lora_fix

    cpu_lora_fix.apply()  # base rows of a mixed LoRA batch on CPU (see the module)
    if os.environ.get("THAWLINE_ADAPTER_STORE"):  # lora_resolver.STORE_ENV; imported only when used
        from snapshots.vllm_engine.lora_resolver import register_from_env

        register_from_env()
    _registered = True
