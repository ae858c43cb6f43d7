"""Precision transforms of fp32 graphs: fp16 with onnxruntime's converter, int8 in `int8.py`.

Each precision is a typed options object that knows how to transform one graph and how to
describe what it did for the manifest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # onnx is imported only where a transform runs
    from onnx import ModelProto

PRECISIONS = ("fp32", "fp16", "int8")
# Minimum cosine against sentence-transformers, per precision (export fails below it).
DEFAULT_MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}


@dataclass(frozen=True)
class Fp16Options:
    """Weights and compute in fp16; inputs, outputs and numerically sensitive ops stay fp32.

    Graph inputs/outputs stay fp32 so that the runtime code is the same at every precision
    and the pooling sums run on fp32 token embeddings.
    """

    keep_fp32_ops: tuple[str, ...] = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt")

    def apply(self, model: ModelProto, calibration: Iterable[dict[str, Any]] = ()) -> tuple[ModelProto, dict[str, Any]]:
        """The fp16 graph of `model`, and what was done (`calibration` is unused: fp16 needs none)."""
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(self.keep_fp32_ops))
        return model, {"method": "fp16 cast (onnxruntime.transformers.float16)", "keep_io_types": True,
                "fp32_ops": list(self.keep_fp32_ops)}


@dataclass(frozen=True)
class Int8Options:
    """int8 encoder: SmoothQuant, per-token dynamic int8 matmuls, int8 embedding rows (see `int8.py`).

    `alpha` is SmoothQuant's migration strength (None: no smoothing). `weight_bits` 7 keeps
    uint8 x int8 matmuls exact on AVX2 CPUs without VNNI. Gather tables with at least
    `embedding_min_rows` rows (the vocabulary, not the position table) are stored as int8 rows.
    MatMul nodes whose names match a `keep_fp32_nodes` regex stay fp32.
    """

    alpha: float | None = 0.5
    weight_bits: int = 7
    embedding_min_rows: int = 1024
    keep_fp32_nodes: tuple[str, ...] = ()

    def apply(self, model: ModelProto, calibration: Iterable[dict[str, Any]] = ()) -> tuple[ModelProto, dict[str, Any]]:
        """The int8 graph of `model` (edited in place), and what was done; `calibration` holds
        encoder feeds of real texts."""
        from . import int8

        matmuls = int8.quantizable_matmuls(model, self.keep_fp32_nodes)
        batches = 0
        if self.alpha is not None:
            feeds = list(calibration)
            batches = len(feeds)
            maxima = int8.channel_maxima(model, int8.matmul_inputs(model, matmuls), feeds)
            int8.smooth(model, maxima, self.alpha, matmuls)
        int8.per_token_matmuls(model, matmuls, self.weight_bits)
        tables = int8.int8_embedding_tables(model, self.embedding_min_rows)
        return model, {"method": "SmoothQuant + per-token dynamic int8 MatMulInteger (jobbert_onnx.export.int8)",
                **asdict(self), "keep_fp32_nodes": list(self.keep_fp32_nodes), "int8_matmuls": len(matmuls),
                "int8_embedding_tables": tables, "calibration_batches": batches}


UNCHANGED = {"method": "none", "dtype": "float32"}


def graph_transforms(precision: str) -> tuple[Fp16Options | Int8Options | None, Fp16Options | None]:
    """The transform for the encoder and for the heads at `precision` (None keeps fp32).

    Pooling always stays fp32: its sums over the sequence are where fp16 would lose accuracy.
    int8 leaves the small heads in fp32; quantizing them saves little and costs accuracy.
    """
    if precision == "fp32":
        return None, None
    if precision == "fp16":
        return Fp16Options(), Fp16Options()
    if precision == "int8":
        return Int8Options(), None
    raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
