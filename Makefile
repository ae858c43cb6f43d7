# The two commands of the README:
#   make demo   set up, export MODEL at int8, print the seed titles' similarity matrix
#   make test   set up and run the tests (what CI runs)
# And the fast lane: make test-fast   runtime, server and dataset tests on the toy artifact, no torch
# And the benchmarks (docs/benchmarks.md):
#   make bench DATA=<job-title-similarity folder>    speed, quality, then the report
#   make levers DATA=<job-title-similarity folder>   what each speed/accuracy lever does
#   make serve-bench DATA=...   the server's load test, with infinity-emb as the peer (bench/serve.py)
#   make datasets-bench DATA=...   dataset embedding, local engine and Ray (bench/datasets.py)
PYTHON   ?= python3
VENV     ?= .venv
MODEL    ?= TechWolf/JobBERT-v3
ARTIFACT ?= artifacts/demo-int8
# The CPU build of torch, pinned before anything that depends on torch can pull a CUDA build.
TORCH    ?= torch==2.13.0
PIP       = $(VENV)/bin/python -m pip --disable-pip-version-check

SEED_TITLES = 'Software Engineer' '高级软件开发人员' 'Produktmanager' 'Científica de datos'

.PHONY: venv demo test test-fast bench levers serve-bench datasets-bench batch-bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[export,test,bench]"
	touch $@

demo: venv
	$(VENV)/bin/jobbert-onnx export "$(MODEL)" "$(ARTIFACT)" --precision int8 --overwrite
	$(VENV)/bin/jobbert-onnx similarity "$(ARTIFACT)" $(SEED_TITLES)

test: venv
	$(VENV)/bin/python -m pytest -q -rs
	PYTHON=$(PYTHON) EXPORT_PYTHON=$(VENV)/bin/python bash tests/check_runtime_only.sh

# Leaves out the tests marked full (export stack) or slow (Ray clusters), and fails if torch,
# transformers or sentence_transformers gets imported. `make test` stays the whole suite.
test-fast: venv
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --fast-lane

bench: venv
	@test -n "$(DATA)" || { echo "make bench: give DATA=<job-title-similarity folder (en/ de/ es/ zh/)>"; exit 2; }
	$(VENV)/bin/python -m bench.speed --data "$(DATA)"
	$(VENV)/bin/python -m bench.quality --data "$(DATA)"
	$(VENV)/bin/python -m bench.report

levers: venv
	@test -n "$(DATA)" || { echo "make levers: give DATA=<job-title-similarity folder (en/ de/ es/ zh/)>"; exit 2; }
	$(VENV)/bin/python -m bench.levers --data "$(DATA)"

# Both need the JobBERT-sized int8 artifact that `make bench` builds (bench/cache/reference-int8).
serve-bench: venv $(PEER_INFINITY)/.installed
	@test -n "$(DATA)" || { echo "make serve-bench: give DATA=<job-title-similarity folder (en/ de/ es/ zh/)>"; exit 2; }
	$(VENV)/bin/python -m bench.serve --data "$(DATA)"

datasets-bench: venv
	@test -n "$(DATA)" || { echo "make datasets-bench: give DATA=<job-title-similarity folder (en/ de/ es/ zh/)>"; exit 2; }
	$(VENV)/bin/python -m bench.datasets --data "$(DATA)"

# its former name
batch-bench: datasets-bench

clean:
	rm -rf $(VENV) .venv-runtime .venv-runtime-floors .venv-runtime-serve .venv-runtime-datasets .venv-runtime-batch .venv-runtime-ray artifacts

# The peers that `bench.speed` runs beside ours (bench/peers.py), each in its own venv, which
# `make bench` builds once. sentence-transformers' ONNX backend needs optimum-onnx, which pins
# transformers < 4.58 (this project needs transformers 5), so pip resolves sentence-transformers
# 5.7.0 for it; fastembed needs no torch. OpenVINO with NNCF (its int8) and tokenizers needs no
# torch either: nncf 3.4.0 pulls none (checked). `python -m bench.speed --peers none` runs without them.
PEER_ST        ?= .venv-peer-st
PEER_FASTEMBED ?= .venv-peer-fastembed
PEER_OPENVINO  ?= .venv-peer-openvino
PEER_ST_PKG    ?= sentence-transformers[onnx]==5.7.0
PEER_FE_PKG    ?= fastembed==0.9.1
PEER_OV_PKG    ?= openvino==2026.4.1 nncf==3.4.0 tokenizers==0.23.3
# bench.serve's peer: infinity-emb with its default torch engine.
PEER_INFINITY  ?= .venv-peer-infinity
PEER_INF_PKG   ?= infinity-emb[server,torch]==0.0.78

.PHONY: peer-venvs clean-peers
peer-venvs: $(PEER_ST)/.installed $(PEER_FASTEMBED)/.installed $(PEER_OPENVINO)/.installed
bench: peer-venvs
clean: clean-peers

# A peer's venv: $(1) the folder, $(2) what to install first (the CPU torch, so that nothing pulls
# a CUDA build; empty for a peer without torch), $(3) the peer itself (one or more pinned packages).
define peer_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip --disable-pip-version-check install -q --upgrade pip
	$(if $(2),$(1)/bin/python -m pip --disable-pip-version-check install -q "$(2)")
	$(1)/bin/python -m pip --disable-pip-version-check install -q $(foreach package,$(3),"$(package)")
	touch $@
endef

$(PEER_ST)/.installed:
	$(call peer_venv,$(PEER_ST),$(TORCH),$(PEER_ST_PKG))

$(PEER_FASTEMBED)/.installed:
	$(call peer_venv,$(PEER_FASTEMBED),,$(PEER_FE_PKG))

$(PEER_OPENVINO)/.installed:
	$(call peer_venv,$(PEER_OPENVINO),,$(PEER_OV_PKG))

$(PEER_INFINITY)/.installed:
	$(call peer_venv,$(PEER_INFINITY),$(TORCH),$(PEER_INF_PKG))

clean-peers:
	rm -rf $(PEER_ST) $(PEER_FASTEMBED) $(PEER_OPENVINO) $(PEER_INFINITY)
