"""Attention rows padded to a multiple of 16 keys, so that an int8 encoder is batch invariant on ARM.

A title alone has rows of L keys in attention; the same title in a batch has rows of P > L keys,
the extra ones masked, which the softmax turns into exact zeros. onnxruntime's x86 kernels give
the two the same sums; its NEON `Softmax` and `MultiHeadAttention` do not: the real keys are
summed in an order that depends on the row's length (as 4-wide vector lanes and a scalar tail
would: rows padded to a multiple of 4 already agreed), and the result differs in the last bit.
fp32 shrugs that off. int8 does not: one last-bit change flips the rounding of one element in
the next per-token quantization, and the flips spread through the layers. all-mpnet-base-v2 at
int8 came out at cosine 0.9995 alone against batched on an emulated Neoverse-N1
(`bench/results/arm64.md`).

With every attention row padded to a multiple of 16 keys (`defaults.ATTENTION_ROW_MULTIPLE`),
the real keys sit in the same lanes whatever the batch, and what follows them adds exact zeros:
the sums agree bit for bit (`tests/test_arm64.py`, on emulated Cortex-A72 and Neoverse-N1; 16
leaves room for wider kernels than onnxruntime 1.32's). The padding is exact: padded keys are
masked (`MultiHeadAttention`) or get the lowest float before the `Softmax`, whose output is cut
back to the row's own length. Its cost on x86 is in `bench/results/levers.md`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .defaults import ATTENTION_ROW_MULTIPLE

_MHA_KEY, _MHA_VALUE, _MHA_MASK = 1, 2, 4  # com.microsoft.MultiHeadAttention's inputs


class _Padder:
    """Collects the nodes and constants that pad attention rows in one graph."""

    def __init__(self, multiple: int) -> None:
        self.multiple = multiple
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.padded_masks: dict[str, tuple[str, str]] = {}  # mask -> (extra keys, padded mask)
        self._pads: dict[tuple[str, int], str] = {}
        self._constants: dict[tuple, str] = {}
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"attention_rows/{stem}_{self._count}"

    def constant(self, value: np.ndarray) -> str:
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._constants:
            self._constants[key] = f"attention_rows/constant_{len(self._constants)}"
            self.initializers.append(numpy_helper.from_array(value, self._constants[key]))
        return self._constants[key]

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        output = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def take(self) -> list[onnx.NodeProto]:
        nodes, self.nodes = self.nodes, []
        return nodes

    def extra(self, tensor: str, axis: int) -> tuple[str, str]:
        """1-element int64 tensors: the length of `tensor` along `axis`, and what rounds it up
        to the multiple."""
        length = self.node("Shape", [tensor], start=axis, **({"end": axis + 1} if axis != -1 else {}))
        multiple = self.constant(np.array([self.multiple], np.int64))
        up = self.node("Add", [length, self.constant(np.array([self.multiple - 1], np.int64))])
        return length, self.node("Sub", [self.node("Mul", [self.node("Div", [up, multiple]), multiple]), length])

    def pad_axis_1(self, tensor: str, extra: str, rank: int) -> str:
        """`tensor` (of rank 2 or 3) with `extra` zeros added at the end of axis 1."""
        if (extra, rank) not in self._pads:
            zeros = [self.constant(np.zeros(n, np.int64)) for n in (rank + 1, rank - 2) if n]
            self._pads[extra, rank] = self.node("Concat", [zeros[0], extra, *zeros[1:]], axis=0)
        return self.node("Pad", [tensor, self._pads[extra, rank]])


def _padded_attention(node: onnx.NodeProto, padder: _Padder) -> list[onnx.NodeProto] | None:
    """A MultiHeadAttention with 3-D key and value and a 2-D key padding mask, reading them
    padded (edited in place; the padded mask is shared by the layers); None for other forms."""
    inputs, padded_masks = list(node.input), padder.padded_masks
    if len(inputs) != _MHA_MASK + 1 or not all(inputs[i] for i in (_MHA_KEY, _MHA_VALUE, _MHA_MASK)):
        return None
    mask = inputs[_MHA_MASK]
    if mask not in padded_masks:
        _, extra = padder.extra(mask, 1)
        padded_masks[mask] = (extra, padder.pad_axis_1(mask, extra, 2))
    extra, inputs[_MHA_MASK] = padded_masks[mask]
    inputs[_MHA_KEY] = padder.pad_axis_1(inputs[_MHA_KEY], extra, 3)
    inputs[_MHA_VALUE] = padder.pad_axis_1(inputs[_MHA_VALUE], extra, 3)
    del node.input[:]
    node.input.extend(inputs)
    return [node]


def _padded_softmax(node: onnx.NodeProto, padder: _Padder) -> list[onnx.NodeProto] | None:
    """A last-axis Softmax reading its input widened with the lowest float (edited in place),
    its output cut back to the input's length; None for other axes."""
    if next((a.i for a in node.attribute if a.name == "axis"), -1) != -1:
        return None
    scores, output = node.input[0], node.output[0]
    length, extra = padder.extra(scores, -1)
    # Concatenated rather than padded, so the input's rank need not be known.
    fill_shape = padder.node("Concat", [padder.node("Shape", [scores], end=-1), extra], axis=0)
    fill = padder.node("ConstantOfShape", [fill_shape],
                       value=numpy_helper.from_array(np.array([np.finfo(np.float32).min], np.float32)))
    node.input[0] = padder.node("Concat", [scores, fill], axis=-1)
    node.output[0] = padder.name("softmax")
    cut = helper.make_node("Slice", [node.output[0], padder.constant(np.array([0], np.int64)), length,
                                     padder.constant(np.array([-1], np.int64))], [output], name=padder.name("slice"))
    return [node, cut]


_PADDED = {("com.microsoft", "MultiHeadAttention"): _padded_attention, ("", "Softmax"): _padded_softmax}


def pad_attention_rows(model: onnx.ModelProto, multiple: int = ATTENTION_ROW_MULTIPLE) -> dict[str, int]:
    """Pad every attention row of `model` (edited in place) to a multiple of `multiple` keys;
    returns how many attention nodes of each kind were padded.

    Covers onnxruntime's fused `MultiHeadAttention` (BERT, XLM-R; `fusion.py`) and last-axis
    `Softmax` nodes (unfused attention, e.g. MPNet's, with its relative position bias).
    """
    padder = _Padder(multiple)
    counts = {op: 0 for _, op in _PADDED}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        edit = _PADDED.get(("" if node.domain == "ai.onnx" else node.domain, node.op_type))
        replaced = edit(node, padder) if edit else None
        if replaced is None:
            nodes.append(node)
        else:
            counts[node.op_type] += 1
            nodes.extend([*padder.take(), *replaced])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(padder.initializers)
    return counts
