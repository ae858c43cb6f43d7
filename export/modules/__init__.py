"""The sentence-transformers modules the exporter supports, one file per kind, as in
sentence-transformers' own `models/`: each file reads its module's config from the checkpoint
folder and builds the PyTorch module that becomes its graph. `export/checkpoint.py` holds the
table of kinds and walks `modules.json`; `base.py` what every kind shares.
"""
