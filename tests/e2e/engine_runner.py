"""Run one vLLM engine action in a fresh process and print `RESULT <json>` as the last line.

The e2e tests start every engine through this script: vLLM keeps process-global state
(torch.distributed groups, env caches, the TP world), so engines of different TP sizes or
failing starts must not share the pytest process.

    python tests/e2e/engine_runner.py '{"action": "create", "hf_dir": ..., "tp": 1, "store_url": ..., "name": ..., "overrides": {}}'
    python tests/e2e/engine_runner.py '{"action": "hf", "hf_dir": ..., "tp": 1, "prompts": [...], "max_tokens": 6}'
    python tests/e2e/engine_runner.py '{"action": "snapshot", "url": ..., "prompts": [...], "max_tokens": 6, "overrides": {}}'
    python tests/e2e/engine_runner.py '{"action": "lora_batches", "hf_dir": ..., "loras": {"a": dir, ...}, "batches": [[null, "a"], ...], "prompts": [...], "max_tokens": 6}'
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
    if action == "lora_batches":
        return {"batches": _lora_batches(spec)}
    raise ValueError(f"unknown action {action!r}")


def _lora_batches(spec: dict) -> list[list[list[int]]]:
    """Each batch (one adapter name or null per prompt) generated as ONE batch, in order, on an
    engine with two adapter slots: what a mixed base + adapter batch answers."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(spec["hf_dir"], dtype=DTYPE, max_model_len=MAX_MODEL_LEN, enforce_eager=True, enable_lora=True,
              max_loras=2, max_cpu_loras=4, max_lora_rank=8)
    ids = {name: i + 1 for i, name in enumerate(spec["loras"])}
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    out = []
    for batch in spec["batches"]:
        loras = [None if n is None else LoRARequest(n, ids[n], spec["loras"][n]) for n in batch]
        res = llm.generate(spec["prompts"][:len(batch)], params, lora_request=loras, use_tqdm=False)
        out.append([list(o.outputs[0].token_ids) for o in res])
    return out


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
