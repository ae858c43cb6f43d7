"""Precision transforms of fp32 graphs: fp16 with onnxruntime's converter, int8 in `int8.py`.

Each precision is a typed options object that knows how to transform one graph and how to
describe what it did for the manifest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .defaults import ATTENTION_ROW_MULTIPLE, PRECISIONS

if TYPE_CHECKING:  # onnx is imported only where a transform runs
    from onnx import ModelProto


@dataclass
class Calibration:
    """Encoder feeds of real texts, and the per-channel activation peaks measured on them, kept
    so that every int8 plan of one export (and the sensitivity ranking) runs the texts once."""

    feeds: list[dict[str, Any]]
    maxima: dict[str, Any] = field(default_factory=dict)
    extremes: dict[str, tuple[float, float]] = field(default_factory=dict)  # signed (min, max) per tensor
    # Where the measuring graph's encoder-sized copy goes (None: $TMPDIR). The exporter passes its
    # staging folder, so a killed export leaves nothing behind that the next one cannot clean.
    scratch: Path | None = None

    def __iter__(self):
        return iter(self.feeds)

    def peaks(self, model: ModelProto, tensors: list[str]) -> dict[str, Any]:
        """Max |x| per channel of each of `tensors` in the fp32 `model`, measured once per tensor."""
        from . import int8

        missing = [t for t in tensors if t not in self.maxima]
        if missing:
            self.maxima.update(int8.channel_maxima(model, missing, self.feeds, self.extremes, self.scratch))
        return {t: self.maxima[t] for t in tensors}


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

    `alpha` is SmoothQuant's migration strength (None: no smoothing). Weights have
    `weight_bits` 8 (pairs of rows trimmed to the AVX2 budget) or 7; both keep uint8 x int8
    matmuls exact on AVX2 CPUs without VNNI (`int8.quantize_weight`). `asymmetric_rows` says which inputs
    quantize each token's row over [min, max] with a zero point instead of [-max|x|, max|x|]:
    "one-sided" ones (GELU outputs, by calibration), "all" or "none". Gather tables with at
    least `embedding_min_rows` rows (the vocabulary, not the position table) are stored as int8
    rows. MatMuls whose node names match a `keep_fp32_nodes` regex, or whose outputs are listed
    in `fp32_matmuls` (a plan's fallbacks, `int8_plans.py`), stay fp32. Attention rows are
    padded to a multiple of `attention_row_multiple` keys (None: left alone), which keeps the
    int8 graph batch invariant on ARM (`attention_rows.py`).
    """

    alpha: float | None = 0.5
    weight_bits: int = 8
    asymmetric_rows: Literal["one-sided", "all", "none"] = "one-sided"
    embedding_min_rows: int = 1024
    keep_fp32_nodes: tuple[str, ...] = ()
    fp32_matmuls: tuple[str, ...] = ()
    attention_row_multiple: int | None = ATTENTION_ROW_MULTIPLE

    def quantized_matmuls(self, model: ModelProto) -> list[str]:
        """Output names of the MatMuls this plan quantizes."""
        from . import int8

        kept = set(self.fp32_matmuls)
        return [name for name in int8.quantizable_matmuls(model, self.keep_fp32_nodes) if name not in kept]

    def prepared(self, model: ModelProto, calibration: Iterable[dict[str, Any]]) -> tuple[ModelProto, list[str], set[str]]:
        """`model` (edited in place) with SmoothQuant folded into the MatMuls this plan quantizes,
        those MatMuls, and the inputs to quantize asymmetrically. A `Calibration` keeps what it
        measured, so that later plans of one export reuse it."""
        from . import int8

        matmuls = self.quantized_matmuls(model)
        inputs = int8.matmul_inputs(model, matmuls)
        if not isinstance(calibration, Calibration):
            calibration = Calibration(list(calibration))
        needs_calibration = self.alpha is not None or self.asymmetric_rows == "one-sided"
        maxima = calibration.peaks(model, inputs) if needs_calibration and calibration.feeds else {}
        asymmetric = {"all": set(inputs), "none": set(),
                      "one-sided": int8.one_sided(calibration.extremes, inputs)}[self.asymmetric_rows]
        if self.alpha is not None:
            int8.smooth(model, maxima, self.alpha, matmuls)
            asymmetric = {f"{name}_smoothed" for name in asymmetric}  # smoothing keeps signs: still one-sided
        return model, matmuls, asymmetric

    def apply(self, model: ModelProto, calibration: Iterable[dict[str, Any]] = ()) -> tuple[ModelProto, dict[str, Any]]:
        """The int8 graph of `model` (edited in place), and what was done; `calibration` holds
        encoder feeds of real texts."""
        from . import int8
        from .attention_rows import pad_attention_rows

        calibration = calibration if isinstance(calibration, Calibration) else Calibration(list(calibration))
        model, matmuls, asymmetric = self.prepared(model, calibration)
        int8.per_token_matmuls(model, matmuls, self.weight_bits, asymmetric)
        tables = int8.int8_embedding_tables(model, self.embedding_min_rows)
        padded = (pad_attention_rows(model, self.attention_row_multiple) if self.attention_row_multiple else {})
        batches = len(calibration.feeds)
        return model, {"method": "SmoothQuant + per-token dynamic int8 MatMulIntegerToFloat (jobbert_onnx.export.int8)",
                **asdict(self), "keep_fp32_nodes": list(self.keep_fp32_nodes),
                "fp32_matmuls": list(self.fp32_matmuls), "int8_matmuls": len(matmuls),
                "asymmetric_inputs": len(asymmetric),
                "int8_embedding_tables": tables, "padded_attention": padded, "calibration_batches": batches}


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
