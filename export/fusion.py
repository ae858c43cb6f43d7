"""Fuse the fp32 encoder graph with onnxruntime's transformer optimizer, before int8 quantization.

The int8 encoder spends about as much time around its matmuls as in them (`bench/results/levers.md`,
"int8 encoder profile"): attention as a dozen Reshape/Transpose/MatMul/Softmax nodes, every
residual Add + LayerNormalization as two passes. onnxruntime's fusions replace them with its
CPU contrib kernels: `MultiHeadAttention`, `SkipLayerNormalization` (bias + residual + LayerNorm)
and `BiasGelu`. Two settings keep the graph quantizable by `int8.py`:

* `MultiHeadAttention`, not `Attention`: Q, K and V stay three plain MatMuls with constant weights
  (`Attention` would pack them into its own weight input, out of the int8 pass's reach).
* No `EmbedLayerNormalization`: the vocabulary stays a `Gather` that `int8_embedding_tables` stores
  as int8 rows, and the exporter's position ids stay as exported.

The attention mask stays the raw [batch, sequence] key padding mask, so no padding side is assumed.
The result needs onnxruntime (com.microsoft ops), which is what the runtime runs. The exporter fuses
the int8 encoder (`fuse_encoder_file`); fp32 and fp16 stay as exported, where the fusions bought
nothing measurable (`bench/results/levers.md`, "onnxruntime.transformers fusions").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnx is imported only where the step runs
    from onnx import ModelProto

FUSED_OPS = ("MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")


def _weight_matmuls(model: ModelProto) -> int:
    initializers = {i.name for i in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in initializers)


def fuse_encoder(model: ModelProto, num_heads: int, hidden_size: int) -> tuple[ModelProto, dict[str, int]]:
    """The fp32 encoder `model` fused (edited in place), and how many of each fused op it holds.

    `num_heads` and `hidden_size` come from the checkpoint's config (onnxruntime cannot read them
    from the exported graph, whose reshapes are dynamic). Attention that the optimizer does not
    recognise stays unfused (MPNet's relative position bias should be such a case; untested). Raises RuntimeError if the
    fusion removed any weight MatMul, which would take it away from the int8 pass.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False
    options.use_multi_head_attention = True
    options.use_raw_attention_mask(True)
    before = _weight_matmuls(model)
    # opt_level=0: only the Python fusions; onnxruntime's own session optimizations still run at load
    # time, so nothing specific to this machine or onnxruntime build is baked into the graph.
    optimized = optimize_model(model, model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                               optimization_options=options, opt_level=0)
    fused = optimized.model
    if _weight_matmuls(fused) != before:
        raise RuntimeError(f"onnxruntime's fusion left {_weight_matmuls(fused)} of the encoder's {before} weight "
                           "MatMuls; the int8 pass needs them all.")
    counts = optimized.get_fused_operator_statistics()
    return fused, {op: counts.get(op, 0) for op in FUSED_OPS}


def fuse_encoder_file(path: Path, num_heads: int | None, hidden_size: int) -> dict[str, object]:
    """Replace the fp32 encoder graph at `path` by its fused form, for the int8 pass; returns
    what was done, for the manifest. Fusing is an optimization, so when it cannot run (no head
    count in the checkpoint's config, or a fusion that would take weight MatMuls away) the graph
    stays as exported and the record says why."""
    import onnx

    if num_heads is None:
        return {"fused": False, "reason": "config.json has no usable num_attention_heads"}
    try:
        fused, counts = fuse_encoder(onnx.load(str(path)), num_heads, hidden_size)
    except Exception as exc:  # noqa: BLE001 - the optimizer's own failures too: unfused still exports
        return {"fused": False, "reason": f"{type(exc).__name__}: {exc}"}
    onnx.save(fused, str(path), save_as_external_data=fused.ByteSize() > 2**30, location=f"{path.name}.data")
    return {"fused": True, "fused_ops": counts}
