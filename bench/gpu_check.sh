#!/usr/bin/env bash
# The CUDA path on a GPU machine: parity with the CPU, then throughput against PyTorch CUDA.
# Usage: bash bench/gpu_check.sh DATA OUT [WHEEL]
#   DATA   the job-title-similarity folder
#   OUT    folder for gpu_check.json, gpu_check.md and the log
#   WHEEL  an onnxruntime-gpu wheel to install into a private folder first (machines without a
#          package index); without it, the installed onnxruntime must be the GPU build.
# Needs torch (CUDA), sentence-transformers, transformers, onnx and tokenizers installed.
set -euo pipefail
DATA=${1:?usage: bash bench/gpu_check.sh DATA OUT [WHEEL]}
OUT=${2:?usage: bash bench/gpu_check.sh DATA OUT [WHEEL]}
WHEEL=${3:-}
PYTHON=${PYTHON:-python3}
SITE=$(mktemp -d /tmp/jobbert-gpu-site.XXXX)
mkdir -p "$OUT"

if [ -n "$WHEEL" ]; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --target "$SITE/ort" "$WHEEL"
  export PYTHONPATH="$SITE/ort${PYTHONPATH:+:$PYTHONPATH}"
fi
# This project, without its dependencies (they are there already) and without a package index.
$PYTHON -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE/project" .
# -P and --import-mode=append make the installed copy win over the checkout's export/ and runtime/.
export PYTHONPATH="$SITE/project:${PYTHONPATH:+$PYTHONPATH:}$(pwd)" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt" || true
# The runtime tests, CUDA ones included (they are skipped on machines without a GPU).
$PYTHON -P -m pytest -q -p no:cacheprovider --import-mode=append tests/test_runtime.py -k "cuda or provider or binding or both" 2>&1 | tee "$OUT/pytest.txt" | tail -n 40 || true
$PYTHON -P -m bench.gpu_check --data "$DATA" --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
