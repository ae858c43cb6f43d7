"""The CPU's matrix-multiply rate through onnxruntime at the encoder's own shapes.

One graph per precision holds a whole encoder layer's weight matmuls (Q, K, V, attention output,
FFN in, FFN out) on a [rows, hidden] input. fp32 uses MatMul; int8 uses the same uint8 x int8
`MatMulInteger` with 7-bit weights as the int8 artifacts. Its rate is the most this CPU gives
onnxruntime for the encoder's work; the benchmark reports the model's achieved rate against it.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def layer_shapes(hidden: int, ffn: int) -> list[tuple[int, int]]:
    """(in, out) of one transformer layer's weight matmuls."""
    return [(hidden, hidden)] * 4 + [(hidden, ffn), (ffn, hidden)]


INT4_BLOCK = 32


def matmul_nbits(x: str, y: str, name: str, codes: np.ndarray, scales: np.ndarray,
                 bits: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """A com.microsoft `MatMulNBits` node y = x @ W and its initializers, from W's unsigned codes
    [N, K / block, block] (zero point 2^(bits-1), packed two to a byte at 4 bits) and one scale per
    block [N, K / block]. accuracy_level 4: activations quantized to int8 per block inside the kernel."""
    n, blocks, block = codes.shape
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4) if bits == 4 else codes
    weights = [numpy_helper.from_array(packed, f"{name}_nbits"),
               numpy_helper.from_array(scales.astype(np.float32).ravel(), f"{name}_nbits_scale")]
    node = helper.make_node("MatMulNBits", [x, f"{name}_nbits", f"{name}_nbits_scale"], [y], domain="com.microsoft",
                            K=blocks * block, N=n, bits=bits, block_size=block, accuracy_level=4)
    return node, weights


def _layer_graph(shapes: list[tuple[int, int]], precision: str) -> bytes:
    """Independent matmuls of `shapes`: fp32 `MatMul`; int8 uint8 x 7-bit `MatMulInteger`, as the
    int8 artifacts; int4 com.microsoft `MatMulNBits` (4-bit blocks of 32 along K, activations
    quantized to int8 per block inside the kernel), the sub-8-bit form onnxruntime runs on CPUs."""
    rng = np.random.default_rng(0)
    nodes, inits, inputs, outputs = [], [], [], []
    for i, (k, n) in enumerate(shapes):
        if precision == "fp32":
            inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["rows", k]))
            inits.append(numpy_helper.from_array(rng.normal(size=(k, n)).astype(np.float32), f"w{i}"))
            nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"]))
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["rows", n]))
        elif precision == "int4":
            inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["rows", k]))
            codes = rng.integers(0, 16, size=(n, k // INT4_BLOCK, INT4_BLOCK)).astype(np.uint8)
            node, weights = matmul_nbits(f"x{i}", f"y{i}", f"w{i}", codes,
                                         rng.uniform(0.01, 0.02, (n, k // INT4_BLOCK)), bits=4)
            nodes.append(node)
            inits += weights
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["rows", n]))
        else:
            inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.UINT8, ["rows", k]))
            inits.append(numpy_helper.from_array(rng.integers(-63, 64, size=(k, n)).astype(np.int8), f"w{i}"))
            nodes.append(helper.make_node("MatMulInteger", [f"x{i}", f"w{i}", "zp"], [f"y{i}"]))
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.INT32, ["rows", n]))
    if precision == "int8":
        inits.append(numpy_helper.from_array(np.array(128, np.uint8), "zp"))
    graph = helper.make_graph(nodes, "layer", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if precision == "int4" else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def layer_weight_bytes(precision: str, hidden: int = 768, ffn: int = 3072) -> int:
    """Bytes of one layer's matmul weights (and scales) as `precision` stores them."""
    graph = onnx.load_from_string(_layer_graph(layer_shapes(hidden, ffn), precision)).graph
    return sum(numpy_helper.to_array(i).nbytes for i in graph.initializer if i.name != "zp")


def layer_ops(rows: int, hidden: int = 768, ffn: int = 3072) -> int:
    """Operations (2 per multiply-add) of one layer's weight matmuls on `rows` tokens."""
    return 2 * rows * sum(k * n for k, n in layer_shapes(hidden, ffn))


def layer_matmul_times(precision: str, rows: int, hidden: int = 768, ffn: int = 3072, seconds: float = 2.0,
                       threads: int | None = None, layers: int = 1) -> list[float]:
    """Seconds of each run, over `seconds`, of `layers` layers' matmuls (each with its own weights)
    on `rows` tokens, after one warm-up run."""
    shapes = layer_shapes(hidden, ffn) * layers
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(_layer_graph(shapes, precision), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feed = {f"x{i}": (rng.integers(0, 256, size=(rows, k)).astype(np.uint8) if precision == "int8"
                      else rng.normal(size=(rows, k)).astype(np.float32))
            for i, (k, _) in enumerate(shapes)}
    session.run(None, feed)
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return times


def matmul_rate(precision: str, rows: int, hidden: int = 768, ffn: int = 3072, seconds: float = 2.0,
                threads: int | None = None) -> float:
    """Best-of-runs operations per second (2 per multiply-add) of one layer's matmuls on `rows` tokens."""
    return layer_ops(rows, hidden, ffn) / min(layer_matmul_times(precision, rows, hidden, ffn, seconds, threads))


def encoder_ops_per_token(layers: int, hidden: int, ffn: int, sequence: float) -> float:
    """Multiply-add operations (x2) per token of an encoder: weight matmuls plus attention's two
    activation matmuls over `sequence` positions."""
    weights = sum(k * n for k, n in layer_shapes(hidden, ffn))
    attention = 2 * sequence * hidden
    return 2 * layers * (weights + attention)


def padded_tokens(lengths_by_text: list[int], batch: int) -> tuple[int, float]:
    """Tokens the encoder computes (padding included) with the runtime's batches, sorted by token
    count as `Embedder.encode` sorts them, and the attention work's mean sequence length
    weighted by tokens."""
    order = sorted(range(len(lengths_by_text)), key=lambda i: -lengths_by_text[i])  # stable, as np.argsort
    total, weighted = 0, 0.0
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        width = max(lengths_by_text[i] for i in rows)
        total += width * len(rows)
        weighted += width * width * len(rows)
    return total, weighted / total


def achieved_rates(throughput: dict[str, dict[str, float]], lengths: list[int], peaks: dict[str, float],
                   shape: dict[str, int]) -> dict[str, dict[str, dict[str, float]]]:
    """Each ONNX variant's encoder operations per second at each batch size, and its share of
    the matmul peak of its precision (fp16 against fp32's), from titles/s over `lengths`, for an
    encoder of `shape` (a transformers config's hidden_size, intermediate_size, num_hidden_layers)."""
    hidden, ffn, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    achieved = {}
    for name, rates in throughput.items():
        if not name.startswith("onnx-"):  # ours only: the peers batch differently
            continue
        peak = peaks["int8" if name.endswith("int8") else "fp32"]
        achieved[name] = {}
        for batch, titles_per_second in rates.items():
            tokens, sequence = padded_tokens(lengths, int(batch))
            ops = tokens * encoder_ops_per_token(layers, hidden, ffn, sequence)
            ops_per_second = ops * titles_per_second / len(lengths)
            achieved[name][batch] = {"ops_per_second": ops_per_second, "fraction_of_peak": ops_per_second / peak}
    return achieved
