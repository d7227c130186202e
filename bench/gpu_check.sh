#!/usr/bin/env bash
# GPU check for a lent CUDA machine (one short run, well under 5 minutes of device time).
#
#   1. restore a snapshot rank into CUDA through pinned host memory; report H2D GB/s against a
#      plain torch copy of the same number of bytes (pinned host tensor -> cuda, same process);
#   2. make an engine snapshot of the tiny model with vLLM on CUDA (NCCL_TOPO_DUMP_FILE /
#      NCCL_GRAPH_DUMP_FILE set by create_engine_snapshot), start vLLM from it (NCCL_TOPO_FILE /
#      NCCL_GRAPH_FILE set by start_engine) and check greedy tokens against vLLM on the HF dir.
#
# Needs: a CUDA vLLM in the active Python (pip install -e '.[gpu]'), no network (HF_HUB_OFFLINE=1).
# Usage: bash bench/gpu_check.sh [OUT_DIR]     (results: OUT_DIR/gpu_check.json, default $OUT or /tmp)
set -euo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-/tmp}}"
WORK="$(mktemp -d /tmp/thawline-gpu-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export THAWLINE_CACHE_DIR="$WORK/cache" VLLM_CACHE_ROOT="$WORK/vllm-cache" PYTHONPATH="$PWD"
NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$NGPU" -lt 1 ]; then
  echo "error: no CUDA device visible" >&2
  exit 1
fi
TP=1
[ "$NGPU" -ge 2 ] && TP=2
echo "gpus=$NGPU tp=$TP work=$WORK"

timeout 280 "$PY" - "$WORK" "$OUT_DIR" "$TP" <<'PY'
import json, os, sys, time
from pathlib import Path

if __name__ == "__main__":
    work, out_dir, tp = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    import torch
    from testkit.tinyllama import generate_llama
    from snapshots.offline import create_offline_snapshot
    from snapshots.restore import restore

    report = {"device": torch.cuda.get_device_name(0), "tp": tp}

    # 1. H2D through pinned memory: a ~1 GB snapshot (bench preset) restored to cuda:0.
    bench = generate_llama(work / "bench", preset="bench", size_gb=1.0)
    store = (work / "store").as_uri()
    url = create_offline_snapshot(str(bench), store_url=store, name="bench", tp=1)
    restore(url, 0, verify=False)  # warm the page cache: measure H2D, not the disk
    r = restore(url, 0, verify=False, device="cuda:0")
    nbytes = r.timings.bytes
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    dev = host.to("cuda:0", non_blocking=True)
    torch.cuda.synchronize()
    plain_s = time.perf_counter() - t0
    report.update({
        "bytes": nbytes, "pinned": r.timings.pinned,
        "restore_h2d_gbps": round(nbytes / r.timings.device_s / 1e9, 2) if r.timings.device_s else None,
        "plain_torch_h2d_gbps": round(nbytes / plain_s / 1e9, 2),
    })
    del dev, host, r
    torch.cuda.empty_cache()

    # 2. vLLM on CUDA: HF dir vs engine snapshot (NCCL dump at create, NCCL_*_FILE at start).
    import subprocess
    tiny = generate_llama(work / "tiny", preset="tiny")
    code = r'''
import json, sys
from vllm import LLM, SamplingParams
spec = json.loads(sys.argv[1])
if spec["mode"] == "create":
    from snapshots.vllm.capture import create_engine_snapshot
    print("RESULT " + json.dumps(create_engine_snapshot(spec["hf"], tp=spec["tp"], store_url=spec["store"], name="tiny",
          dtype="float32", max_model_len=256, gpu_memory_utilization=0.3, enforce_eager=True)))
    sys.exit(0)
if spec["mode"] == "hf":
    llm = LLM(spec["hf"], tensor_parallel_size=spec["tp"], dtype="float32", max_model_len=256,
              gpu_memory_utilization=0.3, enforce_eager=True)
else:
    import os
    from snapshots.vllm.start import start_engine
    llm = start_engine(spec["url"])
    print("NCCL_ENV " + json.dumps({k: os.environ.get(k) for k in ("NCCL_TOPO_FILE", "NCCL_GRAPH_FILE")}))
out = llm.generate(["Hello world!", "Once upon a time"], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in out]))
'''
    def run(spec):
        p = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=150)
        lines = [l for l in p.stdout.splitlines() if l.startswith(("RESULT ", "NCCL_ENV "))]
        if p.returncode != 0 or not any(l.startswith("RESULT ") for l in lines):
            sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
            raise SystemExit(f"vLLM {spec['mode']} failed")
        return {l.split(" ", 1)[0]: json.loads(l.split(" ", 1)[1]) for l in lines}
    snap_url = run({"mode": "create", "hf": str(tiny), "tp": tp, "store": store})["RESULT"]
    hf_tokens = run({"mode": "hf", "hf": str(tiny), "tp": tp})["RESULT"]
    restored = run({"mode": "snapshot", "url": snap_url})
    from snapshots.vllm.start import read_engine_state
    state = read_engine_state(snap_url)[3]
    report.update({
        "vllm_parity": restored["RESULT"] == hf_tokens,
        "nccl_topo_captured": state.nccl_topo_file is not None,
        "nccl_graph_captured": state.nccl_graph_file is not None,
        "nccl_env_at_start": restored.get("NCCL_ENV"),
        "layout": state.layout.model_dump(),
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    if not report["vllm_parity"]:
        raise SystemExit("greedy tokens differ between the HF dir and the snapshot")
PY
