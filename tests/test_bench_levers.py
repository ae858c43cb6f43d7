"""bench/levers.py's graph rewrites: the earlier int8 form it rebuilds for the per-change table
gives the same numbers as the shipped one, and the matmul floor keeps only the int8 matmuls."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench import levers
from jobbert_onnx.export import int8

pytestmark = pytest.mark.full  # builds int8 graphs with the exporter's recipe

K = 32
NAMES = ("q", "k", "v", "o")


def _int8_layer(opset: int) -> onnx.ModelProto:
    """input_ids -> a float activation -> Q, K, V (one input) and O (another), as per_token_matmuls writes them."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids_float"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["ids_float", "last"], ["ids_3d"]),
             helper.make_node("Mul", ["ids_3d", "spread"], ["x"]),
             helper.make_node("Sin", ["x"], ["x2"])]
    nodes += [helper.make_node("MatMul", ["x" if n != "o" else "x2", f"W{n}"], [n], name=f"/{n}/MatMul") for n in NAMES]
    graph = helper.make_graph(
        nodes, "layer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq", K]) for n in NAMES],
        [numpy_helper.from_array(np.array([-1], np.int64), "last"),
         numpy_helper.from_array(rng.normal(size=K).astype(np.float32), "spread"),
         *(numpy_helper.from_array(rng.normal(size=(K, K)).astype(np.float32), f"W{n}") for n in NAMES)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    int8.per_token_matmuls(model, list(NAMES), weight_bits=8)
    return model


def _run(model: onnx.ModelProto, names) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([[3, 50, 7, 900]], np.int64), "attention_mask": np.ones((1, 4), np.int64)}
    return session.run(list(names), feed)


def test_siblings_apart_gives_the_shipped_numbers_with_one_matmul_per_weight():
    shipped = _int8_layer(17)
    apart = levers._siblings_apart(onnx.load_from_string(shipped.SerializeToString()))
    ops = [n.op_type for n in apart.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 4 and "Split" not in ops
    assert [n.op_type for n in shipped.graph.node].count("MatMulIntegerToFloat") == 2
    for got, expected in zip(_run(apart, NAMES), _run(shipped, NAMES)):
        np.testing.assert_array_equal(got, expected)


def test_matmuls_alone_keeps_only_the_int8_matmuls_with_their_shapes():
    shipped = _int8_layer(17)
    floor = levers._matmuls_alone(onnx.load_from_string(shipped.SerializeToString()))
    matmuls = [n for n in floor.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(matmuls) == 2 and {n.op_type for n in floor.graph.node} <= {"MatMulIntegerToFloat", "Cast", "Unsqueeze", "Expand"}
    outputs = _run(floor, [o.name for o in floor.graph.output])
    assert sorted(o.shape for o in outputs) == [(1, 4, K), (1, 4, 3 * K)]
