"""vLLM's model-class inspection, run in a child of the preloaded forkserver instead of a fresh
interpreter.

Why: building an engine config, vLLM inspects the model's class (`_ModelInfo`: pooling,
multimodal, LoRA support ...). It caches the result in VLLM_CACHE_ROOT/modelinfos; on a miss it
runs the inspection in a subprocess, `python -m vllm.model_executor.models.registry`, which
imports torch + vLLM from scratch: seconds (bench/first_cold_start.py's engine_init.config on a
first cold start against a later one shows it). A restored engine's
VLLM_CACHE_ROOT is its snapshot's engine dir in the node cache (snapshots/vllm_engine/start.py), which
the snapshot does not fill with model infos, so the first engine start of each snapshot on each
node missed: the first cold start of every fresh node cache (every bench run, every new node)
paid a full vLLM import on the cold path.

Here the same inspection function runs in a fork of the forkserver that already imported torch
+ vLLM (forkserver.py), the way vLLM's subprocess would run it: cloudpickled function in, pickled
result out through a file, vLLM's general plugins loaded first. vLLM still writes the result to
its cache. Any failure falls back to vLLM's own subprocess.
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile

log = logging.getLogger("thawline.serve")

_MARK = "_thawline_forkserver"


def install(context) -> None:
    """Route vllm.model_executor.models.registry._run_in_subprocess through `context` (the
    preloaded forkserver's, forkserver.PreloadedContext). Idempotent; a vLLM without that
    function is left as it is."""
    import vllm.model_executor.models.registry as registry

    original = getattr(registry, "_run_in_subprocess", None)
    if original is None or getattr(original, _MARK, False):
        return

    def run(fn):
        try:
            return run_in_fork(context, fn)
        except Exception as e:  # noqa: BLE001 - vLLM's own way still works, only slower
            log.warning("thawline: model inspection in the forkserver failed (%s); vLLM's subprocess instead", e)
            return original(fn)

    setattr(run, _MARK, True)
    registry._run_in_subprocess = run


def run_in_fork(context, fn):
    """fn() in a child of `context`; its pickled result."""
    import cloudpickle

    with tempfile.TemporaryDirectory(prefix="thawline-modelinfo-") as tmp:
        out = os.path.join(tmp, "result.pkl")
        proc = context.Process(target=_run_pickled, args=(cloudpickle.dumps(fn), out))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"inspection child exited with {proc.exitcode}")
        with open(out, "rb") as f:
            return pickle.load(f)


def _run_pickled(payload: bytes, out: str) -> None:
    """In the forkserver child: what `python -m vllm.model_executor.models.registry` does."""
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    result = pickle.loads(payload)()
    with open(out, "wb") as f:
        pickle.dump(result, f)
