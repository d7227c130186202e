"""Run one vLLM engine action in a fresh process and print `RESULT <json>` as the last line.

The e2e tests start every engine through this script: vLLM keeps process-global state
(torch.distributed groups, env caches, the TP world), so engines of different TP sizes or
failing starts must not share the pytest process.

    python tests/e2e/engine_runner.py '{"action": "create", "hf_dir": ..., "tp": 1, "store_url": ..., "name": ..., "overrides": {}}'
    python tests/e2e/engine_runner.py '{"action": "hf", "hf_dir": ..., "tp": 1, "prompts": [...], "max_tokens": 6}'
    python tests/e2e/engine_runner.py '{"action": "snapshot", "url": ..., "prompts": [...], "max_tokens": 6, "overrides": {}}'
"""
from __future__ import annotations

import json
import sys

# Fixed engine settings shared by every e2e engine: small KV budget, short context, fp32 weights.
MAX_MODEL_LEN = 256
DTYPE = "float32"


def _generate(llm, prompts: list[str], max_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams

    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def main(spec: dict) -> dict:
    action = spec["action"]
    if action == "create":
        from snapshots.vllm_engine.capture import create_engine_snapshot

        url = create_engine_snapshot(spec["hf_dir"], tp=spec["tp"], store_url=spec["store_url"], name=spec["name"],
                                     dtype=DTYPE, max_model_len=MAX_MODEL_LEN, **spec.get("overrides", {}))
        return {"url": url}
    if action == "hf":
        from vllm import LLM

        llm = LLM(spec["hf_dir"], tensor_parallel_size=spec["tp"], dtype=DTYPE, max_model_len=MAX_MODEL_LEN)
        return {"tokens": _generate(llm, spec["prompts"], spec["max_tokens"])}
    if action == "snapshot":
        import os
        import tempfile

        from snapshots.vllm_engine.load_timing import TIMING_FILE_ENV, read_rank_loads
        from snapshots.vllm_engine.start import start_engine

        # the loader's per-rank timing events (the engine's processes inherit the variable)
        loads = os.environ[TIMING_FILE_ENV] = os.path.join(tempfile.mkdtemp(prefix="thawline-loads-"), "loads.jsonl")
        llm = start_engine(spec["url"], **spec.get("overrides", {}))
        return {"tokens": _generate(llm, spec["prompts"], spec["max_tokens"]),
                "rank_loads": [load.model_dump() for load in read_rank_loads(loads)]}
    raise ValueError(f"unknown action {action!r}")


if __name__ == "__main__":
    try:
        result = main(json.loads(sys.argv[1]))
        code = 0
    except Exception as exc:  # reported to the test as data: it asserts on the message
        result = {"error": str(exc), "type": type(exc).__name__}
        code = 1
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(code)
