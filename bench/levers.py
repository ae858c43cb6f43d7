"""What each speed and accuracy lever does, measured: `python -m bench.levers --data PATH`.

Every lever is measured against the configuration the project ships, on the reference-size model
(speed, size) and on the real-weight all-MiniLM-L6-v2 (fidelity against its fp32 graph, batch
invariance). Writes `levers.json` and `levers.md` to `--results`. Slow (about 15 minutes on
2 cores); `make bench` does not run it.

Levers: the int8 recipe, onnxruntime session settings, separate graphs against one fused graph,
batching, onnxruntime.transformers fusions at fp32, the int8 graph change by change (nodes,
one-title latency, batch-32 throughput, real-weight MPNet fidelity with full-length texts, the
peers' quantize_dynamic recipe and MatMulNBits beside it), and the matmul kernel's own rate at a
title's rows against larger batches.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bench.machine import machine_info
from bench.measure import cosine_rows, p50_ms, rate, write_results
from bench.artifacts import HERE, prepare_artifacts
from bench.reference_model import XLMR_BASE, build_reference_model
from bench.workload import DataError, full_length_texts, load_tasks, skill_lists, unique_titles
from jobbert_onnx.runtime.manifest import Manifest
from jobbert_onnx.runtime.tokenization import TextTokenizer

DOWN_PROJECTIONS = r"/layer\.\d+/output/dense/MatMul$"


# -- a minimal encoder runner: one session, numpy mean pooling ---------------------------------
class EncoderRunner:
    """Tokenize, run one encoder graph, mean-pool: the encoder's share of the runtime, alone."""

    def __init__(self, artifact: Path, graph: Path | bytes, options: ort.SessionOptions | None = None) -> None:
        manifest = Manifest.load(artifact)
        self.tokenizer = TextTokenizer.from_file(artifact / "tokenizer.json", manifest.tokenizer)
        self.inputs = manifest.encoder.input_names
        start = time.perf_counter()
        source = graph if isinstance(graph, bytes) else str(graph)
        self.session = ort.InferenceSession(source, options or ort.SessionOptions(), providers=["CPUExecutionProvider"])
        self.load_s = time.perf_counter() - start
        self.output = self.session.get_outputs()[0].name

    def __call__(self, texts: list[str], batch: int) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            tokens = self.tokenizer([texts[i] for i in rows])
            hidden = self.session.run([self.output], {n: tokens[n] for n in self.inputs})[0]
            if hidden.ndim == 2:  # a fused graph already pooled (and ran the head)
                pooled = hidden
            else:
                mask = tokens["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            for row, vector in zip(rows, pooled):
                out[row] = vector
        return np.stack(out)


def options(**settings) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    for key, value in settings.items():
        if key == "spinning":
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if value else "0")
        elif key == "config":  # onnxruntime's string session entries, e.g. session.dynamic_block_base
            for entry, setting in value.items():
                opts.add_session_config_entry(entry, setting)
        else:
            setattr(opts, key, value)
    return opts


# -- 1. the int8 recipe ------------------------------------------------------------------------
def _recipes() -> dict:
    """name -> function(fp32 encoder path, output path) producing an int8 encoder."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from jobbert_onnx.export.precision import Int8Options

    def dynamic(per_channel=True, reduce_range=True, weight="QInt8", keep=()):
        def make(src: Path, dst: Path, feeds) -> None:
            names = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node]
            quantize_dynamic(str(src), str(dst), weight_type=QuantType[weight], per_channel=per_channel,
                             reduce_range=reduce_range, op_types_to_quantize=["MatMul"],
                             nodes_to_exclude=[n for n in names if any(re.search(p, n) for p in keep)],
                             extra_options={"MatMulConstBOnly": True})
        return make

    def static(src: Path, dst: Path, feeds) -> None:
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(feeds)

            def get_next(self):
                return next(self.items, None)

        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})

    def nbits(src: Path, dst: Path, feeds) -> None:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=32, is_symmetric=True,
                                         accuracy_level=4)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)

    def ours(**changes):
        def make(src: Path, dst: Path, feeds) -> None:
            model, _ = Int8Options(**changes).apply(onnx.load(str(src)), feeds)
            onnx.save(model, str(dst))
        return make

    return {
        "quantize_dynamic per-channel reduce_range (issue-2 recipe, FFN down fp32)": dynamic(keep=(DOWN_PROJECTIONS,)),
        "quantize_dynamic per-channel reduce_range, all MatMuls": dynamic(),
        "quantize_dynamic per-tensor, u8u8": dynamic(per_channel=False, reduce_range=False, weight="QUInt8"),
        "quantize_static QDQ, MinMax on job titles": static,
        "MatMulNBits 8-bit, block 32, int8 compute": nbits,
        "per-token int8, no SmoothQuant": ours(alpha=None),
        "per-token int8 + SmoothQuant 0.5 (shipped)": ours(),
        "per-token int8 + SmoothQuant 0.5, 8-bit weights": ours(weight_bits=8),
        "shipped, but vocabulary table fp32": ours(embedding_min_rows=10**9),
    }


def int8_recipes(ref: Path, minilm: Path, titles: list[str], work: Path) -> list[dict]:
    from jobbert_onnx.export.calibration import builtin_texts

    rows = []
    eval_titles = titles[:2000]
    longer = sorted(titles, key=len)[-31:]
    for name, make in _recipes().items():
        row = {"recipe": name}
        for label, artifact in (("minilm", minilm), ("reference", ref)):
            runner_fp32 = EncoderRunner(artifact, artifact / "encoder.onnx")
            feeds = []
            texts = builtin_texts()
            for start in range(0, len(texts), 16):
                tokens = runner_fp32.tokenizer(texts[start:start + 16])
                feeds.append({n: tokens[n] for n in runner_fp32.inputs})
            out = work / f"{label}-{len(rows)}.onnx"
            start = time.perf_counter()
            make(artifact / "encoder.onnx", out, feeds)
            row[f"{label}_quantize_s"] = round(time.perf_counter() - start, 1)
            runner = EncoderRunner(artifact, out)
            if label == "minilm":
                cosine = cosine_rows(runner_fp32(eval_titles, 32), runner(eval_titles, 32))
                row["minilm_min_cosine"], row["minilm_mean_cosine"] = float(cosine.min()), float(cosine.mean())
                probe = titles[2000:2040]
                alone = np.concatenate([runner([t], 1) for t in probe])
                batched = np.concatenate([runner([*longer, t], 32)[-1:] for t in probe])
                row["batch_invariance_min_cosine"] = float(cosine_rows(alone, batched).min())
            else:
                sample = titles[:512]
                row["reference_encoder_mb"] = round(out.stat().st_size / 1e6, 1)
                row["reference_titles_per_s_b8"] = rate(runner, sample, 8)
                row["reference_p50_ms"] = p50_ms(runner, sample)
            out.unlink()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# -- 2. session settings ------------------------------------------------------------------------
def session_settings(artifacts: dict[str, Path], titles: list[str], work: Path) -> list[dict]:
    sample = titles[:512]
    rows = []
    levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all (default)": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    for precision in ("fp32", "int8"):
        artifact = artifacts[precision]
        settings = {f"optimization {k}": options(graph_optimization_level=v) for k, v in levels.items()}
        settings |= {"1 thread": options(intra_op_num_threads=1), "no spinning": options(spinning=False),
                     "no memory arena": options(enable_cpu_mem_arena=False),
                     # Smaller, dynamically claimed blocks of work per thread: for ~10-row matmuls split over
                     # 2 threads, where one thread finishing early waits for the other.
                     "dynamic block base 4": options(config={"session.dynamic_block_base": "4"}),
                     # The worker thread pinned to the second core (the calling thread is left to the OS).
                     "worker pinned to core 2": options(config={"session.intra_op_thread_affinities": "2"})}
        saved = work / f"optimized-{precision}.onnx"
        optimizing = options(graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                             optimized_model_filepath=str(saved))
        # The weights go to a file beside it, as in the artifact (a graph over 2 GB cannot hold them).
        optimizing.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{saved.name}.data")
        optimizing.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(artifact / "encoder.onnx"), optimizing, providers=["CPUExecutionProvider"])
        for name, opts in settings.items():
            runner = EncoderRunner(artifact, artifact / "encoder.onnx", opts)
            rows.append({"precision": precision, "setting": name, "session_load_s": runner.load_s,
                         "titles_per_s_b8": rate(runner, sample, 8), "p50_ms": p50_ms(runner, sample)})
            print(json.dumps(rows[-1]), flush=True)
        runner = EncoderRunner(artifact, saved, options(graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL))
        rows.append({"precision": precision, "setting": "optimized graph saved ahead, loaded unoptimized",
                     "session_load_s": runner.load_s, "titles_per_s_b8": rate(runner, sample, 8),
                     "p50_ms": p50_ms(runner, sample)})
        print(json.dumps(rows[-1]), flush=True)
        del runner
        for path in (saved, work / f"{saved.name}.data"):
            path.unlink(missing_ok=True)
    return rows


# -- 3. separate graphs against one fused graph ---------------------------------------------------
def fused_graph(artifact: Path, head: str) -> bytes:
    """encoder + pooling + one head as one graph, with onnx.compose."""
    from onnx import compose

    manifest = Manifest.load(artifact)
    encoder = onnx.load(str(artifact / manifest.encoder.file))
    pooling = onnx.load(str(artifact / manifest.pooling.file))
    head_graph = onnx.load(str(artifact / manifest.heads[head].file))
    merged = compose.merge_models(encoder, compose.add_prefix(pooling, "pooling/"),
                                  io_map=[("token_embeddings", "pooling/token_embeddings")])
    merged = compose.merge_models(merged, compose.add_prefix(head_graph, "head/"),
                                  io_map=[("pooling/sentence_embedding", "head/sentence_embedding")])
    for node in merged.graph.node:  # pooling reads the encoder's own attention_mask input
        node.input[:] = ["attention_mask" if i == "pooling/attention_mask" else i for i in node.input]
    keep = [i for i in merged.graph.input if i.name != "pooling/attention_mask"]
    del merged.graph.input[:]
    merged.graph.input.extend(keep)
    return merged.SerializeToString()


def separate_vs_fused(artifacts: dict[str, Path], titles: list[str]) -> list[dict]:
    from jobbert_onnx.runtime import Embedder
    from jobbert_onnx.runtime import embedder as embedder_module

    sample = titles[:512]
    rows = []
    for precision in ("fp32", "int8"):
        artifact = artifacts[precision]
        shipped = Embedder(artifact)

        def run(embedder):
            return lambda texts, batch: embedder.encode(texts, head="anchor", batch_size=batch)

        original = embedder_module.session_options
        embedder_module.session_options = lambda threads=None: original(None)  # every session its own pool
        try:
            own_pools = Embedder(artifact)
        finally:
            embedder_module.session_options = original
        fused = EncoderRunner(artifact, fused_graph(artifact, "anchor"))
        for name, fn in (("separate graphs, pooling/head on the calling thread (shipped)", run(shipped)),
                         ("separate graphs, each with its own thread pool", run(own_pools)),
                         ("one fused graph (encoder+pooling+head)", fused)):
            rows.append({"precision": precision, "variant": name, "titles_per_s_b8": rate(fn, sample, 8),
                         "titles_per_s_b32": rate(fn, sample, 32), "p50_ms": p50_ms(fn, sample)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# -- 4. batching ----------------------------------------------------------------------------------
def batching(artifacts: dict[str, Path], titles: list[str], skills: list[str]) -> list[dict]:
    """Padding and speed of batch compositions on a mix of titles and skill lists."""
    runner = EncoderRunner(artifacts["int8"], artifacts["int8"] / "encoder.onnx")
    texts = titles[:448] + skills[:64]
    lengths = {t: int(m.sum()) for t, m in zip(texts, runner.tokenizer(texts)["attention_mask"])}

    def plan_fixed(key, batch):
        order = sorted(texts, key=key)
        return [order[i:i + batch] for i in range(0, len(order), batch)]

    def plan_budget(budget):
        order = sorted(texts, key=lambda t: -lengths[t])
        batches, current = [], []
        for text in order:
            if current and (len(current) + 1) * lengths[current[0]] > budget:
                batches.append(current)
                current = []
            current.append(text)
        return batches + [current] if current else batches

    def run(plan):
        def fn(_texts, _batch):
            for batch in plan:
                tokens = runner.tokenizer(batch)
                runner.session.run([runner.output], {n: tokens[n] for n in runner.inputs})
        return fn

    plans = {
        "unsorted, 32 per batch": plan_fixed(lambda t: 0, 32),
        "sorted by characters, 32 per batch (sentence-transformers; shipped before)": plan_fixed(lambda t: -len(t), 32),
        "sorted by tokens, 32 per batch (shipped)": plan_fixed(lambda t: -lengths[t], 32),
        "sorted by tokens, budget 512 tokens per batch": plan_budget(512),
        "sorted by tokens, budget 2048 tokens per batch": plan_budget(2048),
    }
    rows = []
    for name, plan in plans.items():
        padded = sum(len(b) * max(lengths[t] for t in b) for b in plan)
        real = sum(lengths[t] for b in plan for t in b)
        rows.append({"plan": name, "batches": len(plan), "padding_share": 1 - real / padded,
                     "texts_per_s": rate(run(plan), texts, 0)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# -- 5. onnxruntime.transformers fusions at fp32 ---------------------------------------------------
def transformer_fusions(artifacts: dict[str, Path], titles: list[str], work: Path) -> list[dict]:
    from onnxruntime.transformers.optimizer import optimize_model

    artifact = artifacts["fp32"]
    fused_path = work / "fused-fp32.onnx"
    optimized = optimize_model(str(artifact / "encoder.onnx"), model_type="bert", num_heads=12, hidden_size=768)
    optimized.save_model_to_file(str(fused_path))
    ops = sorted({n.op_type for n in optimized.model.graph.node} & {"Attention", "SkipLayerNormalization",
                                                                    "BiasGelu", "FastGelu", "EmbedLayerNormalization"})
    sample = titles[:512]
    rows = []
    for name, graph in (("as exported (shipped)", artifact / "encoder.onnx"), (f"fused: {', '.join(ops)}", fused_path)):
        runner = EncoderRunner(artifact, graph)
        rows.append({"graph": name, "titles_per_s_b8": rate(runner, sample, 8),
                     "titles_per_s_b32": rate(runner, sample, 32), "p50_ms": p50_ms(runner, sample)})
        print(json.dumps(rows[-1]), flush=True)
    fused_path.unlink()
    return rows


# -- 6. the int8 graph, change by change (issue 16) -------------------------------------------------
def _as_before(model: onnx.ModelProto) -> onnx.ModelProto:
    """The shipped int8 graph in the form it had before `MatMulIntegerToFloat`: each one as
    MatMulInteger -> Cast -> Mul(column scales) -> Mul(row scales), and each per-row
    inverse -> Mul as one full-tensor Div by the row scale. Same numbers, more nodes."""
    from onnx import TensorProto, helper

    producers = {out: node for node in model.graph.node for out in node.output}
    nodes = []
    for node in model.graph.node:
        if node.output[0].endswith("_row_inverse"):
            continue
        if node.op_type == "Mul" and node.input[1].endswith("_row_inverse"):
            scale = producers[node.input[1]].input[-1]  # Div(1, scale)
            nodes.append(helper.make_node("Div", [node.input[0], scale], list(node.output)))
        elif node.op_type == "MatMulIntegerToFloat":
            a, b, row_scale, column_scale, zero_point = node.input[:5]
            p = node.output[0]
            nodes += [helper.make_node("MatMulInteger", [a, b, zero_point], [f"{p}_int32"]),
                      helper.make_node("Cast", [f"{p}_int32"], [f"{p}_float"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", [f"{p}_float", column_scale], [f"{p}_column_scaled"]),
                      helper.make_node("Mul", [f"{p}_column_scaled", row_scale], [p])]
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _siblings_apart(model: onnx.ModelProto) -> onnx.ModelProto:
    """The int8 graph as it was before Q, K and V became one matmul: each `MatMulIntegerToFloat`
    followed by a `Split` becomes one such node per part, on its slice of the weights and scales.
    Same numbers, more nodes."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    splits = {n.input[0]: n for n in model.graph.node if n.op_type == "Split"}
    nodes, added, dropped = [], [], set()
    for node in model.graph.node:
        split = splits.get(node.output[0]) if node.op_type == "MatMulIntegerToFloat" else None
        if node.op_type == "Split" and node.input[0] in dropped:
            continue
        if split is None:
            nodes.append(node)
            continue
        dropped.add(node.output[0])
        weight = numpy_helper.to_array(initializers[node.input[1]])
        scale = numpy_helper.to_array(initializers[node.input[3]])
        widths = numpy_helper.to_array(initializers[split.input[1]]) if len(split.input) > 1 else \
            next(a.ints for a in split.attribute if a.name == "split")
        start = 0
        for output, width in zip(split.output, widths):
            columns = slice(start, start + int(width))
            start += int(width)
            added += [numpy_helper.from_array(weight[:, columns], f"{output}_weight_int8"),
                      numpy_helper.from_array(scale[columns], f"{output}_weight_scale")]
            nodes.append(helper.make_node("MatMulIntegerToFloat", [node.input[0], f"{output}_weight_int8", node.input[2],
                                                                   f"{output}_weight_scale", *node.input[4:]],
                                          [output], domain="com.microsoft"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(added)
    return _drop_unused_initializers(model)


def _matmuls_alone(model: onnx.ModelProto) -> onnx.ModelProto:
    """The speed floor of an int8 graph: only its `MatMulIntegerToFloat` nodes, with the same
    weights and shapes, fed uint8 rows made from the token ids (every other node removed)."""
    from onnx import TensorProto, helper

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    initializers = {i.name: i for i in model.graph.initializer}
    last = helper.make_tensor("floor_last_axis", TensorProto.INT64, [1], [-1])

    def unsqueeze(x: str, out: str) -> onnx.NodeProto:
        return helper.make_node("Unsqueeze", [x, last.name], [out]) if opset >= 13 else \
            helper.make_node("Unsqueeze", [x], [out], axes=[-1])

    nodes = [helper.make_node("Cast", ["input_ids"], ["floor_ids"], to=TensorProto.UINT8),
             unsqueeze("floor_ids", "floor_ids_3d"),
             unsqueeze("attention_mask", "floor_mask_3d"),
             helper.make_node("Cast", ["floor_mask_3d"], ["floor_row_scale"], to=TensorProto.FLOAT)]
    shapes, outputs = [last], []
    for node in [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]:
        depth = initializers[node.input[1]].dims[0]
        rows = f"floor_rows_{depth}"
        if not any(rows in n.output for n in nodes):
            shapes.append(helper.make_tensor(f"{rows}_shape", TensorProto.INT64, [3], [1, 1, depth]))
            nodes.append(helper.make_node("Expand", ["floor_ids_3d", f"{rows}_shape"], [rows]))
        nodes.append(helper.make_node("MatMulIntegerToFloat", [rows, node.input[1], "floor_row_scale", *node.input[3:]],
                                      [f"{node.name}_floor"], domain="com.microsoft"))
        outputs.append(helper.make_tensor_value_info(f"{node.name}_floor", TensorProto.FLOAT, None))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(shapes)
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return _drop_unused_initializers(model)


def _drop_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {name for node in model.graph.node for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _matmul_nbits(model: onnx.ModelProto, bits: int, block: int) -> onnx.ModelProto:
    """Every constant-weight MatMul as com.microsoft MatMulNBits (symmetric blocks along K,
    accuracy_level 4: activations quantized to int8 per block inside the kernel)."""
    from bench.roofline import matmul_nbits
    from jobbert_onnx.export import int8

    initializers = {i.name: i for i in model.graph.initializer}
    int8._contrib(model)  # the fused graph already imports com.microsoft
    nodes, added = [], []
    for node in model.graph.node:
        weight = int8._matmul_weight(node, initializers)
        if weight is None:
            nodes.append(node)
            continue
        k, n = weight.shape
        blocks = weight.T.reshape(n, k // block, block)
        scale = np.maximum(np.abs(blocks).max(axis=2), 1e-12) / (2 ** (bits - 1) - 1)
        q = (np.clip(np.round(blocks / scale[..., None]), -2 ** (bits - 1), 2 ** (bits - 1) - 1) + 2 ** (bits - 1)).astype(np.uint8)
        nbits, weights = matmul_nbits(node.input[0], node.output[0], node.output[0], q, scale, bits)
        nodes.append(nbits)
        added += weights
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(added)
    return _drop_unused_initializers(model)


QKV_MERGED = "+ Q, K and V as one MatMulIntegerToFloat and a Split"
SHIPPED = "+ attention rows padded to 16 keys, for ARM's kernels (shipped)"
PEERS = "peers' int8: quantize_dynamic per-channel (fastembed, st-onnx)"
FLOOR = "floor: the shipped graph's int8 matmuls alone, every other node removed (not a model)"


def _graph_variants(artifact: Path, feeds: list, num_heads: int, hidden: int, work: Path) -> dict[str, Path]:
    """name -> encoder file in `work`: the int8 graph before and after each change, the peers'
    int8 recipe, and the MatMulNBits kernels (not kept). Each is written as soon as it is built,
    so that a JobBERT-sized run holds one or two graphs in memory, not ten."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from jobbert_onnx.export import int8
    from jobbert_onnx.export.fusion import fuse_encoder
    from jobbert_onnx.export.precision import Int8Options

    def copy(model: onnx.ModelProto) -> onnx.ModelProto:
        twin = onnx.ModelProto()
        twin.CopyFrom(model)
        return twin

    fp32 = onnx.load(str(artifact / "encoder.onnx"))
    fused = fuse_encoder(copy(fp32), num_heads, hidden)[0]
    unpadded = Int8Options(attention_row_multiple=None)
    unfused = unpadded.apply(copy(fp32), feeds)[0]
    peers = work / f"{artifact.name}-quantize-dynamic.onnx"
    # sentence-transformers' avx512_vnni config, which fastembed's int8 in bench.peers uses too.
    quantize_dynamic(str(artifact / "encoder.onnx"), str(peers), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=False)

    def nbits(bits: int, block: int) -> onnx.ModelProto:
        model = _matmul_nbits(copy(fused), bits, block)
        int8.int8_embedding_tables(model, 1024)
        return model

    del fp32
    files: dict[str, Path] = {}

    def save(name: str, model: onnx.ModelProto) -> None:
        files[name] = work / f"{artifact.name}-variant-{len(files)}.onnx"
        onnx.save(model, str(files[name]))

    save("before: MatMulInteger + Cast + 2 Mul, Div per element, unfused", _as_before(_siblings_apart(copy(unfused))))
    save("MatMulIntegerToFloat, one division per row, unfused", _siblings_apart(unfused))
    del unfused
    merged = unpadded.apply(copy(fused), feeds)[0]
    save("+ MultiHeadAttention, SkipLayerNormalization, BiasGelu", _siblings_apart(copy(merged)))
    save(QKV_MERGED, merged)
    del merged
    shipped = Int8Options().apply(copy(fused), feeds)[0]
    save(SHIPPED, shipped)
    save(FLOOR, _matmuls_alone(shipped))
    del shipped
    files[PEERS] = peers
    save("MatMulNBits 8-bit, block 128, int8 compute (not kept)", nbits(8, 128))
    save("MatMulNBits 4-bit, block 32, int8 compute (not kept)", nbits(4, 32))
    return files


def _paired_latency(sessions: dict[str, ort.InferenceSession], feeds: list[dict]) -> dict[str, list[float]]:
    """Seconds per one-title run of each session, the sessions taking turns on every title."""
    for feed in feeds[:10]:
        for session in sessions.values():
            session.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for feed in feeds:
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - start)
    return times


def _op_profile(graph: Path, feeds: list[dict]) -> dict[str, float]:
    """Microseconds per run in each op type, from onnxruntime's profiler (which inflates small ops)."""
    import os
    from collections import defaultdict

    opts = options(enable_profiling=True, spinning=False)
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"jobbert-levers-profile-{os.getpid()}")
    session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    for feed in feeds[:5]:
        session.run(None, feed)
    for feed in feeds:
        session.run(None, feed)
    path = Path(session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-len(feeds):]
    ops: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= runs[0]["ts"]:
            ops[event["args"]["op_name"]] += event["dur"] / len(runs)
    return {"run": sum(r["dur"] for r in runs) / len(runs), **dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def int8_graph(ref: Path, mpnet: Path, titles: list[str], work: Path, repeats: int = 3) -> dict:
    """Each change to the int8 encoder graph: nodes, one-title latency (graphs taking turns on
    every title), batch-32 throughput, and fidelity on real all-mpnet-base-v2 weights against its
    fp32 encoder, on titles and on texts cut at its 384-token window."""
    sample = titles[:512]
    long_texts = full_length_texts(titles)
    rows: dict[str, dict] = {}
    # Fidelity on real weights first; MPNet's graphs are dropped before the timing.
    fp32_runner = EncoderRunner(mpnet, mpnet / "encoder.onnx")
    graphs = _graph_variants(mpnet, _calibration(fp32_runner), 12, 768, work)
    reference, reference_long = fp32_runner(sample, 32), fp32_runner(long_texts, 8)
    probes, longest = sample[:60], sorted(sample, key=len)[-31:]
    del fp32_runner
    for name, graph in graphs.items():
        if name == FLOOR:  # not a model: speed only
            continue
        runner = EncoderRunner(mpnet, graph)
        titles_cosine = cosine_rows(reference, runner(sample, 32))
        long_cosine = cosine_rows(reference_long, runner(long_texts, 8))
        alone = np.concatenate([runner([t], 1) for t in probes])
        batched = np.concatenate([runner([*longest, t], 32)[-1:] for t in probes])
        rows[name] = {"variant": name, "mpnet_min_cosine_titles": float(titles_cosine.min()),
                      "mpnet_mean_cosine_titles": float(titles_cosine.mean()),
                      "mpnet_min_cosine_full_length": float(long_cosine.min()),
                      "mpnet_batch_invariance": float(cosine_rows(alone, batched).min())}
        print(json.dumps(rows[name]), flush=True)
    del graphs
    # Speed on the JobBERT-v3-sized model.
    fp32_runner = EncoderRunner(ref, ref / "encoder.onnx")
    graphs = _graph_variants(ref, _calibration(fp32_runner), XLMR_BASE["num_attention_heads"], XLMR_BASE["hidden_size"], work)
    one_title = [{n: t[n] for n in fp32_runner.inputs} for t in (fp32_runner.tokenizer([x]) for x in sample[:300])]
    del fp32_runner
    rows[FLOOR] = {"variant": FLOOR}
    latencies: dict[str, list[float]] = {name: [] for name in graphs}
    rates: dict[str, list[float]] = {name: [] for name in graphs if name != FLOOR}
    # Spinning is off in every session, so that one session's idle workers do not spin through the
    # next one's run; `session_settings` measures spinning itself.
    runners = {name: EncoderRunner(ref, graph, options(spinning=False)) for name, graph in graphs.items()}
    for round_ in range(repeats):
        for name, seconds in _paired_latency({n: r.session for n, r in runners.items()}, one_title).items():
            latencies[name] += seconds
        for name in rates:
            rates[name].append(rate(runners[name], sample[:256], 32, repeats=1))
        print(f"round {round_ + 1}: " + json.dumps({n: round(float(np.median(latencies[n])) * 1000, 2) for n in graphs}), flush=True)
    del runners
    for name, graph in graphs.items():
        model = onnx.load(str(graph))
        rows[name] |= {"nodes": len(model.graph.node), "encoder_mb": round(model.ByteSize() / 1e6, 1),
                       "p50_ms": float(np.median(latencies[name]) * 1000),
                       "p99_ms": float(np.percentile(latencies[name], 99) * 1000),
                       "titles_per_s_b32": float(np.median(rates[name])) if name in rates else "-"}
    profiles = {name: _op_profile(graphs[name], one_title[:100]) for name in (SHIPPED, PEERS)}
    return {"variants": list(rows.values()), "profiles": profiles}


def kernel_rates(ref: Path, titles: list[str], seconds: float = 3.0) -> dict:
    """onnxruntime's matmul rate on the encoder's weights at a title's rows, against larger batches,
    with 1 and 2 threads: one layer run again and again (its weights stay in cache) and all the
    layers, each with its own weights (streamed from memory, as in the encoder). How far a faster
    int8 kernel could take one-title latency, and whether 4-bit weights, half the bytes, run faster."""
    from bench.roofline import layer_matmul_times, layer_ops, layer_weight_bytes

    tokenizer = EncoderRunner(ref, ref / "encoder.onnx").tokenizer
    lengths = [int(tokenizer([t])["attention_mask"].sum()) for t in titles[:300]]
    title_rows = int(np.median(lengths))
    hidden, ffn, depth = XLMR_BASE["hidden_size"], XLMR_BASE["intermediate_size"], XLMR_BASE["num_hidden_layers"]
    rows = []
    for precision in ("int8", "int4", "fp32"):
        weights_mb = depth * layer_weight_bytes(precision, hidden, ffn) / 1e6
        for layers in (1, depth):
            for threads in (1, 2):
                for tokens in (1, title_rows, 32):
                    times = layer_matmul_times(precision, tokens, hidden, ffn, seconds, threads, layers)
                    ops = layer_ops(tokens, hidden, ffn) * layers
                    scale = depth / layers * 1000  # the encoder's matmuls, in ms
                    rows.append({"precision": precision, "encoder_weights_mb": weights_mb,
                                 "weights": "one layer (in cache)" if layers == 1 else f"{layers} layers (streamed)",
                                 "threads": threads, "rows": tokens, "best_gop_s": ops / min(times) / 1e9,
                                 "median_gop_s": ops / float(np.median(times)) / 1e9,
                                 "encoder_matmuls_ms_best": min(times) * scale,
                                 "encoder_matmuls_ms_median": float(np.median(times)) * scale})
                    print(json.dumps(rows[-1]), flush=True)
    return {"title_rows": title_rows, "rows": rows}


def _calibration(runner: EncoderRunner) -> list[dict]:
    from jobbert_onnx.export.calibration import builtin_texts

    texts = builtin_texts()
    return [{n: t[n] for n in runner.inputs} for t in (runner.tokenizer(texts[i:i + 16]) for i in range(0, len(texts), 16))]


# -- report -----------------------------------------------------------------------------------------
def _table(rows: list[dict], columns: list[str]) -> list[str]:
    def cell(column: str, value) -> str:
        if not isinstance(value, float):
            return str(value)
        if "cosine" in column:
            return f"{value:.5f}"
        if "share" in column:
            return f"{value:.1%}"
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row.get(c, "")) for c in columns) + " |" for row in rows]
    return lines


def to_markdown(result: dict) -> str:
    lines = ["Levers. Speed: JobBERT-v3-sized encoder (random weights); fidelity: all-MiniLM-L6-v2 encoder against "
             "its fp32 graph on 2,000 titles, unless a section says otherwise. Each section names the machine it ran "
             "on: ratios move with the CPU (AVX2 only, or AVX-512 VNNI and AMX).", ""]
    sections = [
        ("int8 recipe", "int8_recipes", ["recipe", "minilm_min_cosine", "minilm_mean_cosine",
                                         "batch_invariance_min_cosine", "reference_encoder_mb",
                                         "reference_titles_per_s_b8", "reference_p50_ms"]),
        ("onnxruntime session settings (encoder alone)", "session_settings",
         ["precision", "setting", "session_load_s", "titles_per_s_b8", "p50_ms"]),
        ("separate graphs against one fused graph", "separate_vs_fused",
         ["precision", "variant", "titles_per_s_b8", "titles_per_s_b32", "p50_ms"]),
        ("batching (int8, 448 titles + 64 skill lists)", "batching",
         ["plan", "batches", "padding_share", "texts_per_s"]),
        ("onnxruntime.transformers fusions (fp32)", "transformer_fusions",
         ["graph", "titles_per_s_b8", "titles_per_s_b32", "p50_ms"]),
    ]
    def where(key: str) -> list[str]:
        measured = result.get("measured", {}).get(key, {"date": result["date"], "machine": result["machine"]})
        m = measured["machine"]
        simd = ", ".join(flag for flag, present in m.get("simd", {}).items() if present)
        return [f"Measured {measured['date']} on {m['cpu']}, {m['cores']} cores ({simd}), onnxruntime "
                f"{m['versions'].get('onnxruntime')}.", ""]

    for title, key, columns in sections:
        if key in result:
            lines += [f"### {title}", ""] + where(key) + _table(result[key], columns) + [""]
    if "int8_graph" in result:
        lines += _int8_graph_markdown(result["int8_graph"], where("int8_graph"))
    if "kernel_rates" in result:
        lines += _kernel_rates_markdown(result, where("kernel_rates"))
    if "int8_kernels" in result:  # an earlier run's section, measured on the graph before issue 16
        lines += _int8_kernels_markdown(result["int8_kernels"], where("int8_kernels"))
    return "\n".join(lines)


def _int8_graph_markdown(section: dict, where: list[str]) -> list[str]:
    lines = ["### the int8 graph, change by change (speed: reference model, one title and batch 32; "
             "cosine: all-mpnet-base-v2 against its fp32 encoder)", "", *where]
    lines += _table(section["variants"], ["variant", "nodes", "p50_ms", "p99_ms", "titles_per_s_b32", "encoder_mb",
                                          "mpnet_min_cosine_titles", "mpnet_mean_cosine_titles",
                                          "mpnet_min_cosine_full_length", "mpnet_batch_invariance"])
    lines += [f"- {note}" for note in section.get("notes", [])]
    lines += ["", "Latency: every graph in one process, taking turns on each of 300 titles, 3 rounds, spinning off in "
              "every session (so that idle workers of one do not spin through the next one's run). Throughput: 256 "
              "titles at batch 32, one run per round, median. MPNet: 512 titles and 13 texts cut at 384 tokens "
              "(export/probes.py's FULL_LENGTH and runs of 150 titles); invariance: 60 titles alone against last in "
              "a batch of the 31 longest.", "", "Profile at batch 1 (onnxruntime profiler, µs per run by op type; "
              "the profiler inflates small ops):", ""]
    profiles = section["profiles"]
    ops = list(dict.fromkeys(op for profile in profiles.values() for op in profile))
    lines += ["| op | " + " | ".join(profiles) + " |", "|---|" + "---|" * len(profiles)]
    lines += [f"| {op} | " + " | ".join(f"{p.get(op, 0):.0f}" for p in profiles.values()) + " |" for op in ops]
    return lines + [""]


def _kernel_rates_markdown(result: dict, where: list[str]) -> list[str]:
    section = result["kernel_rates"]
    rows = section["rows"]
    lines = [f"### the matmul kernel at a title's rows (the encoder's weight matmuls alone, JobBERT-v3 shapes; "
             f"{section['title_rows']} rows = the median title's tokens)", "", *where]
    lines += _table(rows, ["precision", "encoder_weights_mb", "weights", "threads", "rows", "best_gop_s",
                           "median_gop_s", "encoder_matmuls_ms_best", "encoder_matmuls_ms_median"])
    graph = {row["variant"]: row for row in result.get("int8_graph", {}).get("variants", [])}
    title, int4 = (next(r for r in rows if r["precision"] == precision and r["threads"] == 2
                        and r["rows"] == section["title_rows"] and "streamed" in r["weights"]) for precision in ("int8", "int4"))
    notes = ["", "encoder_matmuls_ms: the twelve layers' matmuls for one batch of `rows` tokens (from one layer's time "
             "times twelve where the weights stay in cache). int8: MatMulInteger, the kernel that the shipped graph's "
             "MatMulIntegerToFloat calls; int4: MatMulNBits, 4-bit blocks of 32 with int8 compute, the form a mixed "
             "4/8-bit plan would use; spinning on, as the runtime runs."]
    if PEERS in graph and SHIPPED in graph:
        target = 0.6 * graph[PEERS]["p50_ms"]
        notes.append(f"Issue 16's target, 0.6x the peers' int8 p50 in the change-by-change run above, is {target:.1f} ms; "
                     f"the shipped graph's p50 there was {graph[SHIPPED]['p50_ms']:.1f} ms. The int8 kernel alone takes "
                     f"{title['encoder_matmuls_ms_best']:.1f} ms (best run) to {title['encoder_matmuls_ms_median']:.1f} ms "
                     "(median) of it on this CPU with its weights streamed, before attention, norms, GELU and quantization.")
    notes.append(f"4-bit weights ({int4['encoder_weights_mb']:.0f} MB against {title['encoder_weights_mb']:.0f} MB) take "
                 f"{int4['encoder_matmuls_ms_median']:.1f} ms at the median against int8's "
                 f"{title['encoder_matmuls_ms_median']:.1f} ms for the same title.")
    return lines + notes + [""]


def _int8_kernels_markdown(section: dict, where: list[str]) -> list[str]:
    profiles = section["profiles"]
    groups = list(dict.fromkeys(g for p in profiles.values() for g in p if g not in ("run", "kernels")))
    header = " | ".join(f"{name} µs | share" for name in profiles)
    lines = ["### int8 encoder profile (an earlier run, on the graph before issue 16; onnxruntime profiler, "
             "reference model, µs per run)", "", *where,
             f"| kernel group | {header} |", "|---|" + "---|---|" * len(profiles)]
    for group in groups:
        cells = " | ".join(f"{p.get(group, 0):.0f} | {p.get(group, 0) / p['kernels']:.1%}" for p in profiles.values())
        lines.append(f"| {group} | {cells} |")
    for total in ("kernels", "run"):
        lines.append(f"| all {total} | " + " | ".join(f"{p[total]:.0f} | " for p in profiles.values()) + " |")
    fused = section["fused_fp32_vs_fp32"]
    if section.get("conditions"):
        lines += ["", f"Conditions: {section['conditions']}"]
    lines += ["", "### int8 kernel variants (speed: reference model; cosine: against each model's fp32 encoder)", "",
              f"fusion.py at fp32 against the unfused fp32 encoder (reference model, titles): min cosine "
              f"{fused['min_cosine']:.7f}, mean {fused['mean_cosine']:.7f}. int8 matmul peak "
              f"{section['int8_peak_ops_per_s'] / 1e9:.0f} GOP/s.", ""]
    columns = ["variant", "p50_ms", "titles_per_s_b8", "titles_per_s_b32", "spread_b32", "roofline_share_b8",
               "roofline_share_b32", "reference_min_cosine", "minilm_min_cosine", "minilm_mean_cosine",
               "minilm_batch_invariance", "reference_batch_invariance"]
    notes = ["", "Variants: *reciprocal row scale*: the full-tensor `Div` by the row scale becomes a `Mul` by its "
             "`Reciprocal` (one value per row). *MatMulIntegerToFloat*: com.microsoft's kernel takes the per-row A scale "
             "([batch, seq, 1]) and the per-column weight scales, replacing MatMulInteger, Cast and two Muls (with "
             "asymmetric rows the zero-point term is subtracted after it in fp32). *fused*: `export/fusion.py` "
             "(MultiHeadAttention, SkipLayerNormalization, BiasGelu from onnxruntime.transformers) on the fp32 "
             "encoder, then the same int8 pass. Speed in one process, variants taking turns, medians; spread_b32 is "
             "the range over rounds. Differences under ~20% on this shared VM are within noise.", ""]
    return lines + _table(section["variants"], columns) + notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="the job-title-similarity folder")
    parser.add_argument("--cache", type=Path, default=HERE / "cache")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--only", nargs="*", help="re-run only these sections (e.g. batching int8_recipes)")
    args = parser.parse_args(argv)
    try:
        all_titles = unique_titles(load_tasks(args.data))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from datetime import datetime, timezone

    from bench.real_models import minilm_path, mpnet_path
    from jobbert_onnx.export import ExportConfig, export_model

    model = build_reference_model(args.cache / "reference-model", all_titles)
    artifacts = prepare_artifacts(model, args.cache, ("fp32", "int8"))
    work = Path(tempfile.mkdtemp(prefix="jobbert-levers-"))
    minilm = export_model(ExportConfig(model=str(minilm_path()), output=work / "minilm-fp32", show_progress=False))

    def mpnet_fp32() -> Path:
        return prepare_artifacts(mpnet_path(), args.cache, ("fp32",), name="mpnet")["fp32"]
    # --only re-measures some sections and keeps the others from the last run.
    previous = args.results / "levers.json"
    result = json.loads(previous.read_text(encoding="utf-8")) if args.only and previous.exists() else {}
    result |= {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info()}
    sections = {
        "int8_recipes": lambda: int8_recipes(artifacts["fp32"], minilm, all_titles, work),
        "session_settings": lambda: session_settings(artifacts, all_titles, work),
        "separate_vs_fused": lambda: separate_vs_fused(artifacts, all_titles),
        "batching": lambda: batching(artifacts, all_titles, skill_lists(all_titles, 64)),
        "transformer_fusions": lambda: transformer_fusions(artifacts, all_titles, work),
        "int8_graph": lambda: int8_graph(artifacts["fp32"], mpnet_fp32(), all_titles, work),
        "kernel_rates": lambda: kernel_rates(artifacts["fp32"], all_titles),
    }
    for name, run in sections.items():
        if args.only and name not in args.only:
            continue
        print(f"[levers] {name}", file=sys.stderr, flush=True)
        result[name] = run()
        # --only keeps earlier sections, so each says where and when it was measured.
        result.setdefault("measured", {})[name] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                                   "machine": machine_info()}
    shutil.rmtree(work, ignore_errors=True)
    markdown = to_markdown(result)
    write_results(args.results, "levers", result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
