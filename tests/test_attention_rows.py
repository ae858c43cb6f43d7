"""Attention rows padded to a multiple of 16 keys (export/attention_rows.py) give the same numbers.

The padding exists for ARM's kernels (tests/test_arm64.py shows it keeps int8 batch invariant
there); here, on any CPU, the padded graphs must compute what the unpadded ones did, and the
attention must really see rows of a multiple of 16 keys.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from jobbert_onnx.export.attention_rows import pad_attention_rows

HIDDEN, HEADS = 32, 4
LENGTHS = (1, 5, 15, 16, 17, 33)


def _model(nodes, inputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "attention", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _mha(mask_input: str = "mask") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    bias = numpy_helper.from_array(rng.normal(size=3 * HIDDEN).astype(np.float32), "bias")
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "bias", mask_input], ["y"], domain="com.microsoft",
                            num_heads=HEADS)
    tensors = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "s", HIDDEN]) for n in "qkv"]
    mask = [helper.make_tensor_value_info("mask", TensorProto.INT32, ["b", "s"])] if mask_input else []
    return _model([node], [*tensors, *mask], [bias])


def _softmax(axis: int = -1) -> onnx.ModelProto:
    nodes = [helper.make_node("Softmax", ["scores"], ["p"], axis=axis), helper.make_node("MatMul", ["p", "v"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", HEADS, "s", "s"]),
                          helper.make_tensor_value_info("v", TensorProto.FLOAT, ["b", HEADS, "s", 8])])


def _run(model: onnx.ModelProto, feeds: dict, watch: str | None = None) -> list[np.ndarray]:
    if watch:  # expose an inner tensor too
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.output.append(helper.make_tensor_value_info(watch, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _mha_feeds(length: int, rng) -> dict:
    feeds = {n: rng.normal(size=(3, length, HIDDEN)).astype(np.float32) for n in "qkv"}
    mask = np.ones((3, length), np.int32)
    mask[1, length // 2 + 1:] = 0  # a shorter row, padded as in a batch
    return {**feeds, "mask": mask}


def _softmax_feeds(length: int, rng) -> dict:
    scores = rng.normal(size=(2, HEADS, length, length)).astype(np.float32) * 4
    scores[1, ..., length // 2 + 1:] = np.finfo(np.float32).min  # masked keys, as the encoder adds them
    return {"scores": scores, "v": rng.normal(size=(2, HEADS, length, 8)).astype(np.float32)}


@pytest.mark.parametrize("build, feeds, op, watched, axis", [
    (_mha, _mha_feeds, "MultiHeadAttention", lambda node: node.input[1], 1),  # the keys it reads
    (_softmax, _softmax_feeds, "Softmax", lambda node: node.output[0], -1),  # the rows it wrote
], ids=["MultiHeadAttention", "Softmax"])
def test_attention_sees_rows_of_a_multiple_of_16_keys_and_gives_the_same_numbers(build, feeds, op, watched, axis):
    rng = np.random.default_rng(1)
    padded = build()
    assert pad_attention_rows(padded) == {"MultiHeadAttention": 0, "Softmax": 0, op: 1}
    watch = watched(next(n for n in padded.graph.node if n.op_type == op))
    for length in LENGTHS:
        feed = feeds(length, rng)
        expected = _run(build(), feed)[0]
        got, wide = _run(padded, feed, watch=watch)
        keys = wide.shape[axis]
        assert keys % 16 == 0 and keys >= length and not np.take(wide, range(length, keys), axis=axis).any()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", [_softmax(axis=2), _mha(mask_input="")], ids=["softmax-on-another-axis", "mha-without-mask"])
def test_other_forms_are_left_alone(model):
    before = model.SerializeToString()
    assert set(pad_attention_rows(model).values()) == {0}
    assert model.SerializeToString() == before
