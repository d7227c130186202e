"""vLLM's model-class inspection on a cache miss runs in a fork of the preloaded forkserver
(serve_apps/llm/model_info.py), not in a `python -m vllm.model_executor.models.registry`
subprocess that imports vLLM again, and gives what that inspection gives."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from testkit.proc import run_in_own_session

REPO_ROOT = Path(__file__).resolve().parents[2]

# Run as `python -c`: a forkserver child re-imports the parent's main *file*, and there is none.
CODE = r"""
import dataclasses, json, os, subprocess, tempfile
os.environ["VLLM_CACHE_ROOT"] = tempfile.mkdtemp(prefix="tl-modelinfo-")  # a fresh engine dir's: a miss
from serve_apps.llm import forkserver
forkserver.start()
import vllm.model_executor.models.registry as registry

vllm_subprocesses = []
real_run = subprocess.run
def spy(cmd, *a, **kw):
    if list(cmd) == list(registry._SUBPROCESS_COMMAND):
        vllm_subprocesses.append(cmd)
    return real_run(cmd, *a, **kw)
registry.subprocess.run = spy

lazy = registry.ModelRegistry.models["LlamaForCausalLM"]
info = lazy.inspect_model_cls()
direct = registry._ModelInfo.from_model_cls(lazy.load_model_cls())
cached = os.listdir(os.path.join(os.environ["VLLM_CACHE_ROOT"], "modelinfos"))
print("RESULT " + json.dumps({"vllm_subprocesses": len(vllm_subprocesses), "same": info == direct,
                             "cached": cached, "info": dataclasses.asdict(info)}, default=str))
"""


def test_model_inspection_miss_runs_in_the_forkserver_with_vllms_result():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    rc, out, err = run_in_own_session([sys.executable, "-c", CODE], env=env, cwd=REPO_ROOT, timeout=600)
    lines = [ln[7:] for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert rc == 0 and lines, f"rc={rc}\n{out[-2000:]}\n{err[-4000:]}"
    res = json.loads(lines[0])
    assert res["vllm_subprocesses"] == 0, "vLLM re-imported itself in a subprocess to inspect the model"
    assert res["same"], res["info"]
    assert res["cached"] == ["vllm-model_executor-models-llama-LlamaForCausalLM.json"]
    assert "thawline: model inspection in the forkserver failed" not in err
