"""The exporter's choices and defaults, in one torch-free place: the CLI builds its options from
them, and `export/pipeline.py` validates against them."""

from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "int8")
# Minimum cosine against sentence-transformers, per precision (the export fails below it).
DEFAULT_MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}
# int8 tries more accurate plans until the worst probe clears the threshold by this much.
DEFAULT_MARGIN = {"fp32": 0.0, "fp16": 0.0, "int8": 0.005}
# The oldest ONNX opset whose ops every graph uses (LayerNormalization is opset 17).
MIN_OPSET = 17
# Which tokenizer ships (export/tokenizer_choice.py; docs/artifact.md, "Which tokenizer the artifact ships").
TOKENIZER_CHOICES = ("transformers", "checkpoint")
DEFAULT_TOKENIZER = "transformers"
# int8 attention rows are padded to a multiple of this many keys, for ARM (export/attention_rows.py).
ATTENTION_ROW_MULTIPLE = 16
