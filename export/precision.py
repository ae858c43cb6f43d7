"""Precision transforms of fp32 graphs, done with onnxruntime's own tools.

Each precision is a typed options object that knows how to transform one graph and how to
describe what it did for the manifest.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

PRECISIONS = ("fp32", "fp16", "int8")
# Minimum cosine against sentence-transformers, per precision (export fails below it).
DEFAULT_MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.98}


@dataclass(frozen=True)
class Fp16Options:
    """Weights and compute in fp16; inputs, outputs and numerically sensitive ops stay fp32.

    Graph inputs/outputs stay fp32 so that the runtime code is the same at every precision
    and the pooling sums run on fp32 token embeddings.
    """

    keep_fp32_ops: tuple[str, ...] = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt")

    def apply(self, source: Path, target: Path) -> dict[str, Any]:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(
            onnx.load(str(source)), keep_io_types=True, op_block_list=list(self.keep_fp32_ops)
        )
        onnx.save(model, str(target))
        return {"method": "fp16 cast (onnxruntime.transformers.float16)", "keep_io_types": True,
                "fp32_ops": list(self.keep_fp32_ops)}


@dataclass(frozen=True)
class Int8Options:
    """Dynamic quantization of the encoder's weight matrices (onnxruntime.quantization).

    On AVX2 CPUs without VNNI, u8s8 integer matmuls can saturate their 16-bit intermediate
    sums; `reduce_range` keeps signed weights to 7 bits so that cannot happen
    (onnxruntime's quantization notes, "u8s8 saturation").

    The feed-forward down-projections (`keep_fp32_nodes`, matched against node names) read
    GELU outputs whose outliers per-tensor uint8 activations capture badly; keeping them fp32
    lifted all-MiniLM-L6-v2's worst probe cosine from 0.977 to 0.983 for 11 MB more.
    """

    weight_type: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = True
    op_types: tuple[str, ...] = ("MatMul",)
    keep_fp32_nodes: tuple[str, ...] = (r"/layer\.\d+/output/dense/MatMul$",)
    extra_options: dict[str, Any] = field(default_factory=lambda: {"MatMulConstBOnly": True})

    def apply(self, source: Path, target: Path) -> dict[str, Any]:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        patterns = [re.compile(p) for p in self.keep_fp32_nodes]
        names = [node.name for node in onnx.load(str(source), load_external_data=False).graph.node]
        excluded = [name for name in names if any(p.search(name) for p in patterns)]
        with _without_preprocess_hint():
            quantize_dynamic(
                str(source), str(target), weight_type=QuantType[self.weight_type], per_channel=self.per_channel,
                reduce_range=self.reduce_range, op_types_to_quantize=list(self.op_types),
                nodes_to_exclude=excluded, extra_options=dict(self.extra_options),
            )
        return {"method": "dynamic quantization (onnxruntime.quantization.quantize_dynamic)",
                "activation_type": "QUInt8", **asdict(self), "op_types": list(self.op_types),
                "keep_fp32_nodes": list(self.keep_fp32_nodes), "fp32_node_count": len(excluded)}


@contextmanager
def _without_preprocess_hint() -> Iterator[None]:
    """Hide quantize_dynamic's generic 'consider pre-processing' warning on the root logger.

    It concerns static quantization of vision models; users would read it as a problem here.
    """

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


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
