"""Which int8 matmuls hurt the embedding most: a ranking that the int8 plans fall back along.

One graph holds both paths of every quantizable MatMul, the per-token int8 one and the exact
fp32 one, and a boolean input picks which one each MatMul passes on (`Where`). So a single
onnxruntime session measures any mix, and leave-one-out costs one run per MatMul instead of
one graph build and session per MatMul. The score is the pooled sentence embedding's cosine
against the all-fp32 graph, on the calibration texts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from jobbert_onnx.runtime.vectors import cosine_rows

from . import int8
from .precision import Int8Options

Feed = dict[str, np.ndarray]
_FLAGS = "int8_flags"


def _switchable(smoothed: onnx.ModelProto, matmuls: Sequence[str], weight_bits: int,
                asymmetric: set[str]) -> onnx.ModelProto:
    """A copy of `smoothed` in which MatMul `matmuls[i]` is int8 when `int8_flags[i]` is true."""
    model = onnx.ModelProto()
    model.CopyFrom(smoothed)
    edit = int8._GraphEdit(model)
    wanted = {name: index for index, name in enumerate(matmuls)}
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        if node.output and node.output[0] in wanted:
            out = node.output[0]
            node.output[0] = f"{out}_int8"  # quantized below, in place
            flag = edit.constant(f"{out}_flag_index", np.array(wanted[out], np.int64))
            nodes += [helper.make_node("MatMul", list(node.input), [f"{out}_fp32"], name=f"{node.name}_fp32"),
                      helper.make_node("Gather", [_FLAGS, flag], [f"{out}_flag"], axis=0),
                      helper.make_node("Where", [f"{out}_flag", f"{out}_int8", f"{out}_fp32"], [out])]
    edit.finish(nodes)
    int8.per_token_matmuls(model, [f"{m}_int8" for m in matmuls], weight_bits, asymmetric)
    model.graph.input.append(helper.make_tensor_value_info(_FLAGS, TensorProto.BOOL, [len(matmuls)]))
    return model


@dataclass
class Sensitivity:
    """MatMuls ordered from the most to the least harmful when quantized, with the score each
    one's fp32 fallback bought alone (mean + worst cosine loss, lower is better)."""

    ranked: list[str]
    loss_all_int8: float
    loss_without: dict[str, float]


def rank_matmuls(options: Int8Options, encoder: onnx.ModelProto, calibration: Sequence[Feed],
                 feeds: Sequence[Feed], pooling: onnx.ModelProto, scratch_dir: Path | None = None) -> Sensitivity:
    """Rank the MatMuls that `options` quantizes in the fp32 `encoder` by leave-one-out: how much
    the pooled embeddings of `feeds` improve when only that MatMul stays fp32. SmoothQuant is
    calibrated on `calibration`, as the export does. The switchable graph is written under
    `scratch_dir` (None: $TMPDIR)."""
    import onnxruntime as ort

    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(encoder)
    smoothed, matmuls, asymmetric = options.prepared(smoothed, calibration)
    model = _switchable(smoothed, matmuls, options.weight_bits, asymmetric)
    del smoothed
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="jobbert-onnx-sensitivity-", dir=scratch_dir) as scratch:
        path = Path(scratch) / "switchable.onnx"
        onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 2**30)
        switchable = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        pool = ort.InferenceSession(pooling.SerializeToString(), session_options, providers=["CPUExecutionProvider"])

        def pooled(flags: np.ndarray) -> np.ndarray:
            out = []
            for feed in feeds:
                tokens = switchable.run(None, {**feed, _FLAGS: flags})[0]
                out.append(pool.run(None, {"token_embeddings": tokens, "attention_mask": feed["attention_mask"]})[0])
            return np.concatenate(out).astype(np.float64)

        reference = pooled(np.zeros(len(matmuls), bool))

        def loss(flags: np.ndarray) -> float:
            got = pooled(flags)
            cosine = cosine_rows(got, reference)
            return float((1 - cosine).mean() + (1 - cosine).max())

        everything = np.ones(len(matmuls), bool)
        base = loss(everything)
        without = {}
        for index, name in enumerate(matmuls):
            flags = everything.copy()
            flags[index] = False
            without[name] = loss(flags)
    ranked = sorted(matmuls, key=lambda name: without[name])
    return Sensitivity(ranked, base, without)
