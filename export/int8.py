"""The int8 encoder: SmoothQuant, per-token dynamic int8 matmuls and an int8 embedding table.

Why not onnxruntime's `quantize_dynamic`: it quantizes each activation tensor with ONE scale for
the whole batch, padding included, so a title's embedding changes with its batch neighbours and
real-weight fidelity stays low; its `quantize_static` fixes the batch problem but loses more
accuracy, and `MatMulNBits` (8-bit, int8 compute) is accurate but much slower on the CPU
(figures: `bench/results/levers.md`, `bench/results/peers.md`). onnxruntime has no per-token
activation quantization for CPU matmuls, so this module writes that graph itself, from standard
ONNX ops:

* **Per-token activations.** Each row (token) of a matmul input gets its own scale, so a token's
  numbers never depend on other rows: batch invariant by design. Symmetric rows use
  `max|x| / 127` around zero point 128; rows of one-sided inputs (GELU outputs, found by
  calibration) use [min, max] with a zero point per row, whose term is subtracted after the
  matmul. The uint8 rows are multiplied by int8 weights with com.microsoft's
  `MatMulIntegerToFloat`, which scales the int32 result back by row scale times column scale in
  the same node.
* **Weights:** per output channel, symmetric, 8 bits with each pair of rows trimmed so that
  |w[2j]| + |w[2j+1]| <= 128 (`quantize_weight`). uint8 x int8 products summed in pairs would
  saturate 16 bits on AVX2 CPUs without VNNI otherwise; within that budget one artifact is exact
  on every x86 CPU (`bench/results/avx2_exactness.md`).
* **SmoothQuant** (Xiao et al., 2023): a few activation channels carry outliers that would eat a
  row's 8-bit range. Calibrated on job titles, each matmul input channel `c` is divided by
  `s_c = max|x_c|^alpha / max|W_c|^(1 - alpha)` (one `Mul`) and the weight rows multiplied by it,
  which is exact in fp32 and moves the difficulty into the weights.
* **Embedding table:** symmetric int8 per row, looked up with two `Gather`s (rows and their
  scales): a quarter of the fp32 table's size.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Container, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Feed = dict[str, np.ndarray]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _matmul_weight(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The 2-D constant weight of a MatMul node, or None if it multiplies two activations."""
    if node.op_type != "MatMul" or node.input[1] not in initializers:
        return None
    weight = numpy_helper.to_array(initializers[node.input[1]])
    return weight if weight.ndim == 2 and weight.dtype == np.float32 else None


class _GraphEdit:
    """Collects the nodes and initializers that replace parts of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.added: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.added.append(numpy_helper.from_array(value, name))
        return name

    def finish(self, nodes: list[onnx.NodeProto]) -> None:
        """Install `nodes` and drop initializers no node reads any more."""
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input} | {o.name for o in self.graph.output}
        kept = [i for i in [*self.graph.initializer, *self.added] if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)


def one_sided(extremes: dict[str, tuple[float, float]], tensors: Iterable[str], ratio: float = 0.25) -> set[str]:
    """The tensors whose calibration values are mostly one-sided (min >= -ratio * max, as after
    GELU or ReLU): the inputs where asymmetric rows gain almost a bit."""
    return {t for t in tensors if t in extremes and extremes[t][1] > 0 and extremes[t][0] >= -ratio * extremes[t][1]}


def quantizable_matmuls(model: onnx.ModelProto, exclude: Sequence[str] = ()) -> list[str]:
    """Output names of the MatMuls with a constant 2-D fp32 weight, except those whose node name
    matches one of the `exclude` regexes. (Outputs identify nodes across graph edits.)"""
    initializers = {i.name: i for i in model.graph.initializer}
    patterns = [re.compile(p) for p in exclude]
    return [node.output[0] for node in model.graph.node
            if _matmul_weight(node, initializers) is not None and not any(p.search(node.name) for p in patterns)]


def matmul_inputs(model: onnx.ModelProto, matmuls: Sequence[str]) -> list[str]:
    """The activation tensors that the MatMuls producing `matmuls` read, without repeats."""
    wanted = set(matmuls)
    return list(dict.fromkeys(n.input[0] for n in model.graph.node if n.output and n.output[0] in wanted))


def channel_maxima(source: onnx.ModelProto, tensors: Sequence[str], batches: Iterable[Feed],
                   extremes: dict[str, tuple[float, float]] | None = None,
                   scratch_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Max |x| per last-axis channel of each named tensor over the real (unpadded) tokens of `batches`;
    the signed (min, max) of each tensor go into `extremes` when it is given. The measuring graph
    is written under `scratch_dir` (None: $TMPDIR)."""
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(source)  # the named tensors become extra outputs of a copy
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors if t not in known)
    with tempfile.TemporaryDirectory(prefix="jobbert-onnx-calibrate-", dir=scratch_dir) as scratch:
        path = Path(scratch) / "calibrate.onnx"
        onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 2**30)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        maxima: dict[str, np.ndarray] = {}
        for feed in batches:
            real = feed["attention_mask"].astype(bool)
            for name, value in zip(tensors, session.run(list(tensors), feed)):
                rows = value[real] if value.shape[:2] == real.shape else value.reshape(-1, value.shape[-1])
                if extremes is not None:
                    low, high = extremes.get(name, (np.inf, -np.inf))
                    extremes[name] = (min(low, float(rows.min())), max(high, float(rows.max())))
                peak = np.abs(rows).max(axis=0)
                maxima[name] = peak if name not in maxima else np.maximum(maxima[name], peak)
    if not maxima:
        raise ValueError("calibration got no batches; give at least one text.")
    return maxima


def smooth(model: onnx.ModelProto, maxima: dict[str, np.ndarray], alpha: float, matmuls: Sequence[str]) -> None:
    """Fold SmoothQuant scales into the weights of the MatMuls producing `matmuls`, and insert one
    `Mul` per input tensor that divides it by the same scales."""
    edit = _GraphEdit(model)
    wanted = set(matmuls)
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.output and node.output[0] in wanted:
            by_input.setdefault(node.input[0], []).append(node)
    scales = {}
    for tensor, consumers in by_input.items():
        weights = [_matmul_weight(n, edit.initializers) for n in consumers]
        weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = np.maximum(maxima[tensor], 1e-5) ** alpha / np.maximum(weight_max, 1e-5) ** (1 - alpha)
        scales[tensor] = np.clip(scale, 1e-4, 1e4).astype(np.float32)
        for node, weight in zip(consumers, weights):  # Q, K and V share their input: one scale for all three
            smoothed = (weight * scales[tensor][:, None]).astype(np.float32)
            node.input[1] = edit.constant(f"{node.output[0]}_weight_smoothed", smoothed)
            node.input[0] = f"{tensor}_smoothed"
    muls = {
        tensor: helper.make_node("Mul", [tensor, edit.constant(f"{tensor}_smooth_inverse", 1.0 / scale)],
                                 [f"{tensor}_smoothed"], name=f"{tensor}_smooth")
        for tensor, scale in scales.items()
    }
    # Each Mul goes right after the node that produces its tensor (graph inputs: first), which
    # keeps the node list topologically sorted.
    produced = {out for node in model.graph.node for out in node.output}
    ordered = [mul for tensor, mul in muls.items() if tensor not in produced]
    for node in model.graph.node:
        ordered.append(node)
        ordered.extend(muls[out] for out in node.output if out in muls)
    edit.finish(ordered)


# uint8 x int8 on AVX2 CPUs without VNNI: `vpmaddubsw` adds the products of rows 2j and 2j+1 into a
# saturating int16, so 255 * (|w[2j]| + |w[2j+1]|) must stay <= 32767 (checked under qemu for
# Haswell, EPYC-Rome and Skylake-Client, and in MLAS's kernels; bench/results/levers.md).
PAIR_BUDGET = 128


def _trim_pairs(quantized: np.ndarray) -> None:
    """Cut, in place, every pair of rows (2j, 2j+1) whose magnitudes add up past `PAIR_BUDGET`:
    each loses part of the excess, the larger one the larger part."""
    rows = len(quantized) - len(quantized) % 2
    even, odd = quantized[0:rows:2], quantized[1:rows:2]  # views
    excess = np.maximum(np.abs(even) + np.abs(odd) - PAIR_BUDGET, 0)
    cut_even = np.where(np.abs(even) >= np.abs(odd), (excess + 1) // 2, excess // 2)
    even -= np.sign(even) * cut_even
    odd -= np.sign(odd) * (excess - cut_even)


def quantize_weight(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 of a [K, N] weight: the values and one scale per column.

    7 bits keep every pair of rows within the AVX2 budget by range alone. 8 bits give each
    column the range, from +-127 down to +-63, whose rounding plus pair trimming (`_trim_pairs`)
    loses least; at +-63 nothing is trimmed, so a column is never worse than at 7 bits.
    """
    if bits not in (7, 8):
        raise ValueError(f"weight_bits {bits}: expected 7 or 8")
    peak = np.maximum(np.abs(weight).max(axis=0), 1e-12)
    best_q = best_scale = best_error = None
    for qmax in ((63,) if bits == 7 else (127, 119, 111, 103, 95, 87, 79, 71, 63)):
        scale = peak / qmax
        quantized = np.clip(np.round(weight / scale), -qmax, qmax).astype(np.int32)
        if qmax > 63:
            _trim_pairs(quantized)
        error = np.square(quantized * scale - weight).sum(axis=0)
        if best_q is None:
            best_q, best_scale, best_error = quantized, scale, error
            continue
        better = error < best_error
        best_q[:, better], best_scale[better], best_error[better] = quantized[:, better], scale[better], error[better]
    return best_q.astype(np.int8), best_scale.astype(np.float32)


def _contrib(model: onnx.ModelProto) -> None:
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def per_token_matmuls(model: onnx.ModelProto, matmuls: Sequence[str], weight_bits: int,
                      asymmetric: Container[str] = ()) -> None:
    """Replace the MatMuls producing `matmuls` by per-token uint8 x per-channel int8 matmuls.

    Each input tensor is quantized once, and the MatMuls that read it (Q, K and V) are one
    com.microsoft `MatMulIntegerToFloat` over their weights side by side, then a `Split`. The
    kernel takes the per-row activation scales and per-column weight scales: at batch 1 the per-node
    overhead, not the arithmetic, is what extra nodes cost (`bench/results/levers.md`).
    Rows of the input tensors named in `asymmetric` map [min, max] onto 0..255 with a zero point
    per row, instead of [-max|x|, max|x|] around 128: GELU outputs are almost all >= -0.17, so
    symmetric rows waste nearly one of their 8 bits there. The zero point's term, z * row scale x
    the column sums of W, is subtracted after the matmul. It costs a few extra ops per matmul, so
    only one-sided inputs get it (`one_sided`). (Shifting GELU outputs by their floor, -0.17,
    instead of measuring each row's minimum saved nodes but no time and lost fidelity: levers.md.)
    """
    edit = _GraphEdit(model)
    _contrib(model)
    targets = set(matmuls)
    axes_as_input = _opset(model) >= 18
    split_as_input = _opset(model) >= 13
    one = edit.constant("pt_one", np.array(1.0, np.float32))
    zero = edit.constant("pt_zero", np.array(0.0, np.float32))
    tiny = edit.constant("pt_tiny", np.array(1e-12, np.float32))
    step = {True: edit.constant("pt_step_asymmetric", np.array(1 / 255, np.float32)),
            False: edit.constant("pt_step", np.array(1 / 127, np.float32))}
    zero_point = {True: edit.constant("pt_zero_point_asymmetric", np.array(0, np.uint8)),
                  False: edit.constant("pt_zero_point", np.array(128, np.uint8))}
    last_axis = edit.constant("pt_last_axis", np.array([-1], np.int64)) if axes_as_input else None
    quantized_inputs: dict[str, tuple[str, str, str | None]] = {}  # tensor -> (uint8 rows, row scales, row zero points)

    def reduce(op: str, x: str, out: str) -> onnx.NodeProto:
        if axes_as_input:
            return helper.make_node(op, [x, last_axis], [out], keepdims=1)
        return helper.make_node(op, [x], [out], axes=[-1], keepdims=1)

    def quantize_rows(x: str) -> list[onnx.NodeProto]:
        """Nodes that turn `x` into uint8 rows and one scale (and zero point) per row."""
        p = f"{x}_per_token"
        one_sided = x in asymmetric
        if one_sided:
            nodes = [
                reduce("ReduceMax", x, f"{p}_max_raw"),
                reduce("ReduceMin", x, f"{p}_min_raw"),
                helper.make_node("Max", [f"{p}_max_raw", zero], [f"{p}_max_signed"]),  # zero stays exact
                helper.make_node("Min", [f"{p}_min_raw", zero], [f"{p}_min"]),
                helper.make_node("Sub", [f"{p}_max_signed", f"{p}_min"], [f"{p}_max"]),
            ]
            row_zero_point = f"{p}_row_zero_point"
        else:
            nodes = [helper.make_node("Abs", [x], [f"{p}_abs"]), reduce("ReduceMax", f"{p}_abs", f"{p}_max")]
            row_zero_point = None
        nodes += [
            helper.make_node("Max", [f"{p}_max", tiny], [f"{p}_max_safe"]),  # an all-zero row
            helper.make_node("Mul", [f"{p}_max_safe", step[one_sided]], [f"{p}_row_scale"]),
            # One division per row, then a multiplication per element. A Div, not a Reciprocal:
            # on ARM, onnxruntime's Reciprocal gave the same value a different inverse at another
            # place in the tensor, so a row's numbers depended on its batch (export/attention_rows.py).
            helper.make_node("Div", [one, f"{p}_row_scale"], [f"{p}_row_inverse"]),
            helper.make_node("Mul", [x, f"{p}_row_inverse"], [f"{p}_steps"]),
        ]
        scaled = f"{p}_steps"
        if row_zero_point is not None:
            nodes += [
                helper.make_node("Mul", [f"{p}_min", f"{p}_row_inverse"], [f"{p}_min_steps"]),
                helper.make_node("Neg", [f"{p}_min_steps"], [f"{p}_zero_point_raw"]),
                helper.make_node("Round", [f"{p}_zero_point_raw"], [row_zero_point]),
                helper.make_node("Add", [scaled, row_zero_point], [f"{p}_scaled"]),
            ]
            scaled = f"{p}_scaled"
        nodes.append(helper.make_node("QuantizeLinear", [scaled, one, zero_point[one_sided]], [f"{p}_uint8"]))
        quantized_inputs[x] = (f"{p}_uint8", f"{p}_row_scale", row_zero_point)
        return nodes

    # Matmuls reading one tensor (Q, K and V) become one wider matmul, split after it: one kernel
    # call instead of three at batch 1, and the same numbers (each column is computed alone).
    siblings: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.output and node.output[0] in targets:
            siblings.setdefault(node.input[0], []).append(node)
    nodes, scaled_zero_points = [], set()
    for node in model.graph.node:
        if not node.output or node.output[0] not in targets:
            nodes.append(node)
            continue
        x = node.input[0]
        group = siblings[x]
        if node is not group[0]:
            continue  # computed with the first matmul of its group
        parts = [quantize_weight(_matmul_weight(n, edit.initializers), weight_bits) for n in group]
        quantized = np.concatenate([q for q, _ in parts], axis=1)
        weight_scale = np.concatenate([s for _, s in parts])
        p = node.name or node.output[0]
        w = edit.constant(f"{p}_weight_int8", quantized)
        ws = edit.constant(f"{p}_weight_scale", weight_scale)
        if x not in quantized_inputs:
            nodes += quantize_rows(x)
        rows, row_scale, row_zero_point = quantized_inputs[x]
        inputs = [rows, w, row_scale, ws, zero_point[row_zero_point is not None]]
        outputs = [n.output[0] for n in group]
        merged = outputs[0] if len(group) == 1 else f"{p}_merged"
        product = f"{merged}_uncentered" if row_zero_point is not None else merged
        nodes.append(helper.make_node("MatMulIntegerToFloat", inputs, [product], name=p, domain="com.microsoft"))
        if row_zero_point is not None:  # (q - z) s_r @ W s_c = q s_r @ W s_c - (z s_r) x (column sums of W s_c)
            sums = edit.constant(f"{p}_column_sums", quantized.sum(axis=0, dtype=np.int64).astype(np.float32) * weight_scale)
            term = f"{x}_per_token_zero_point_scaled"
            if term not in scaled_zero_points:
                scaled_zero_points.add(term)
                nodes.append(helper.make_node("Mul", [row_zero_point, row_scale], [term]))
            nodes += [helper.make_node("Mul", [term, sums], [f"{p}_zero_point_term"]),
                      helper.make_node("Sub", [product, f"{p}_zero_point_term"], [merged])]
        if len(group) > 1:
            widths = np.array([q.shape[1] for q, _ in parts], np.int64)
            if split_as_input:
                split = helper.make_node("Split", [merged, edit.constant(f"{p}_split", widths)], outputs, axis=-1)
            else:
                split = helper.make_node("Split", [merged], outputs, axis=-1, split=widths.tolist())
            nodes.append(split)
    edit.finish(nodes)


def int8_embedding_tables(model: onnx.ModelProto, min_rows: int) -> int:
    """Store every constant 2-D fp32 Gather table with >= `min_rows` rows as int8 rows plus a scale each.

    Returns the number of tables converted.
    """
    edit = _GraphEdit(model)
    nodes, converted = [], 0
    for node in model.graph.node:
        table = edit.initializers.get(node.input[0]) if node.op_type == "Gather" else None
        values = numpy_helper.to_array(table) if table is not None else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if values is None or values.ndim != 2 or values.dtype != np.float32 or axis != 0 or len(values) < min_rows:
            nodes.append(node)
            continue
        converted += 1
        scale = np.maximum(np.abs(values).max(axis=1, keepdims=True), 1e-12) / 127
        p = node.name or node.output[0]
        rows = edit.constant(f"{table.name}_int8", np.round(values / scale).astype(np.int8))
        scales = edit.constant(f"{table.name}_row_scale", scale.astype(np.float32))
        nodes += [
            helper.make_node("Gather", [rows, node.input[1]], [f"{p}_int8"], axis=0),
            helper.make_node("Gather", [scales, node.input[1]], [f"{p}_scale"], axis=0),
            helper.make_node("Cast", [f"{p}_int8"], [f"{p}_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_float", f"{p}_scale"], list(node.output)),
        ]
    edit.finish(nodes)
    return converted
