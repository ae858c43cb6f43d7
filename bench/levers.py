"""What each speed and accuracy lever does, measured: `python -m bench.levers --data PATH`.

Every lever is measured against the configuration the project ships, on the reference-size model
(speed, size) and on the real-weight all-MiniLM-L6-v2 (fidelity against its fp32 graph, batch
invariance). Writes `levers.json` and `levers.md` to `--results`. Slow (about 15 minutes on
2 cores); `make bench` does not run it.

Levers: the int8 recipe, onnxruntime session settings, separate graphs against one fused graph,
batching, onnxruntime.transformers fusions at fp32, and the int8 encoder's own kernels (profile,
fused fp32 graph before quantization, MatMulIntegerToFloat, reciprocal row scales).
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
from bench.measure import cosine_rows, p50_ms, rate
from bench.artifacts import HERE, prepare_artifacts
from jobbert_onnx.runtime.files import write_atomically
from bench.reference_model import XLMR_BASE, build_reference_model
from bench.workload import DataError, load_tasks, skill_lists, unique_titles
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
                     "no memory arena": options(enable_cpu_mem_arena=False)}
        saved = work / f"optimized-{precision}.onnx"
        ort.InferenceSession(str(artifact / "encoder.onnx"),
                             options(graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     optimized_model_filepath=str(saved)), providers=["CPUExecutionProvider"])
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
        saved.unlink()
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


# -- 6. closer to the metal: the int8 encoder's own kernels ---------------------------------------
# Variants of the int8 graph. The int8.py rewrites below edit the shipped graph after
# `Int8Options.apply`, matching the node names that `export/int8.py` writes.
def _reciprocal_row_scale(model: onnx.ModelProto) -> onnx.ModelProto:
    """Div(x, row scale) over every element -> Mul(x, Reciprocal(row scale)), the division done once per row."""
    from onnx import helper

    nodes = []
    for node in model.graph.node:
        if node.op_type == "Div" and node.input[1].endswith("_per_token_row_scale") and node.output[0].endswith(
                ("_per_token_scaled", "_per_token_steps")):
            inverse = node.input[1] + "_inverse"
            nodes += [helper.make_node("Reciprocal", [node.input[1]], [inverse]),
                      helper.make_node("Mul", [node.input[0], inverse], list(node.output))]
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _matmul_integer_to_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """MatMulInteger -> Cast -> Mul(column scales) -> Mul(row scales) as one com.microsoft
    MatMulIntegerToFloat, whose A scale may be per row ([batch, seq, 1]) and B scale per column.
    With asymmetric rows, the zero-point term (z * row scale) x (column sums * column scales) is
    subtracted in fp32 after it, instead of in int32 before the Cast."""
    from onnx import helper, numpy_helper

    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    initializers = {i.name: i for i in model.graph.initializer}
    readers: dict[str, onnx.NodeProto] = {}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, node)
    replaced, nodes, row_terms = set(), [], set()
    for node in model.graph.node:
        if node.output[0] in replaced:
            continue
        if node.op_type != "MatMulInteger":
            nodes.append(node)
            continue
        chain = [readers[node.output[0]]]
        while chain[-1].op_type != "Mul" or not chain[-1].input[1].endswith("_row_scale"):
            chain.append(readers[chain[-1].output[0]])
        replaced |= {n.output[0] for n in chain}
        column, row = chain[-2], chain[-1]
        centered = chain[0].op_type == "Sub"
        product = f"{node.output[0]}_scaled" if centered else row.output[0]
        nodes.append(helper.make_node("MatMulIntegerToFloat", [node.input[0], node.input[1], row.input[1],
                                                               column.input[1], node.input[2]],
                                      [product], name=node.name, domain="com.microsoft"))
        if centered:  # (q - z) W s_r s_c = q W s_r s_c - (z s_r) (colsum(W) s_c)
            rows = node.input[0][: -len("_uint8")]
            term = producers[chain[0].input[1]]  # Mul(row zero points, column sums), in int32
            replaced.add(term.output[0])
            sums = numpy_helper.to_array(initializers[term.input[1]]).astype(np.float32)
            scales = numpy_helper.to_array(initializers[column.input[1]])
            model.graph.initializer.append(numpy_helper.from_array(sums * scales, f"{node.output[0]}_zero_point_columns"))
            if rows not in row_terms:
                row_terms.add(rows)
                nodes.append(helper.make_node("Mul", [f"{rows}_zero_point_float", row.input[1]], [f"{rows}_zero_point_scaled"]))
            nodes += [helper.make_node("Mul", [f"{rows}_zero_point_scaled", f"{node.output[0]}_zero_point_columns"],
                                       [f"{node.output[0]}_zero_point_term_float"]),
                      helper.make_node("Sub", [product, f"{node.output[0]}_zero_point_term_float"], list(row.output))]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _int8_variants(fp32: onnx.ModelProto, feeds: list, num_heads: int, hidden: int) -> dict[str, bytes]:
    """name -> serialized int8 encoder."""
    from jobbert_onnx.export.fusion import fuse_encoder
    from jobbert_onnx.export.precision import Int8Options

    def copy(model: onnx.ModelProto) -> onnx.ModelProto:
        twin = onnx.ModelProto()
        twin.CopyFrom(model)
        return twin

    shipped = Int8Options().apply(copy(fp32), feeds)[0]
    fused = Int8Options().apply(fuse_encoder(copy(fp32), num_heads, hidden)[0], feeds)[0]
    variants = {
        "shipped": shipped,
        "reciprocal row scale": _reciprocal_row_scale(copy(shipped)),
        "MatMulIntegerToFloat": _matmul_integer_to_float(copy(shipped)),
        "MatMulIntegerToFloat + reciprocal": _matmul_integer_to_float(_reciprocal_row_scale(copy(shipped))),
        "fused (fusion.py)": fused,
        "fused + MatMulIntegerToFloat + reciprocal": _matmul_integer_to_float(_reciprocal_row_scale(copy(fused))),
    }
    return {name: model.SerializeToString() for name, model in variants.items()}


def _profile_group(event_op: str, node: onnx.NodeProto | None) -> str:
    """The cost group of one profiled kernel (int8 roles read from export/int8.py's tensor names)."""
    out = node.output[0] if node is not None else ""
    first = node.input[0] if node is not None and node.input else ""
    if "_per_token" in out:
        return "quantize rows (row range, scale, zero point, Div, QuantizeLinear)"
    if event_op in ("MatMulInteger", "MatMulIntegerToFloat"):
        return f"int8 matmul ({event_op})"
    if ((event_op == "Cast" and first.endswith(("_int32", "_centered")))
            or (event_op == "Mul" and "_column_scaled" in out + first)
            or out.endswith(("_centered", "_zero_point_term", "_zero_point_term_float", "_zero_point_scaled"))
            or (event_op == "Sub" and first.endswith("_scaled"))):
        return "dequantize (zero-point term, Cast, 2 Mul)"
    if out.endswith("_smoothed"):
        return "SmoothQuant Mul"
    if event_op in ("MatMul", "FusedMatMul", "Softmax", "Transpose"):
        return "attention (MatMul, Softmax, Transpose)"
    if event_op in ("LayerNormalization", "SkipLayerNormalization"):
        return "LayerNorm (" + event_op + ")"
    if event_op in ("BiasGelu", "FastGelu", "Gelu", "Erf"):
        return "GELU (" + event_op + ")"
    if event_op in ("MultiHeadAttention", "Add"):
        return {"Add": "Add (bias, residual)"}.get(event_op, event_op)
    return "other (shapes, mask, embeddings)"


def profile_groups(graph: bytes, feeds: list[dict], repeats: int) -> dict[str, float]:
    """Microseconds per run spent in each kernel group, from onnxruntime's profiler; also the
    whole run ("run") and the sum of kernels ("kernels")."""
    import os
    from collections import defaultdict

    model = onnx.load_from_string(graph)
    for node in model.graph.node:  # the profiler reports nodes by name
        node.name = node.name or f"{node.op_type}:{node.output[0]}"
    nodes = {n.name: n for n in model.graph.node}
    opts = options(enable_profiling=True)
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"jobbert-levers-profile-{os.getpid()}")
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    for feed in feeds[:3]:  # warm-up, left out below
        session.run([output], feed)
    for _ in range(repeats):
        for feed in feeds:
            session.run([output], feed)
    path = Path(session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-repeats * len(feeds):]
    count = len(runs)
    groups: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= runs[0]["ts"]:
            name = event["name"][: -len("_kernel_time")]
            groups[_profile_group(event["args"]["op_name"], nodes.get(name))] += event["dur"] / count
    result = dict(sorted(groups.items(), key=lambda kv: -kv[1]))
    return {"run": sum(r["dur"] for r in runs) / count, "kernels": sum(result.values()), **result}


def _encoder_ops(runner: EncoderRunner, texts: list[str], batch: int) -> tuple[float, float]:
    """Encoder operations and tokens per batch (padding included) for `runner`'s own batches of `texts`."""
    from bench import roofline

    ops, tokens = 0.0, []
    order = sorted(texts, key=lambda t: -len(t))  # as EncoderRunner batches them
    for start in range(0, len(order), batch):
        rows, sequence = runner.tokenizer(order[start:start + batch])["attention_mask"].shape
        tokens.append(rows * sequence)
        ops += rows * sequence * roofline.encoder_ops_per_token(
            XLMR_BASE["num_hidden_layers"], XLMR_BASE["hidden_size"], XLMR_BASE["intermediate_size"], sequence)
    return ops, float(np.mean(tokens))


def _calibration(runner: EncoderRunner) -> list[dict]:
    from jobbert_onnx.export.calibration import builtin_texts

    texts = builtin_texts()
    return [{n: t[n] for n in runner.inputs} for t in (runner.tokenizer(texts[i:i + 16]) for i in range(0, len(texts), 16))]


def int8_kernels(ref: Path, minilm: Path, titles: list[str], repeats: int = 3) -> dict:
    """Profile of the shipped int8 encoder, and variants of its kernels: speed at batch 1/8/32 on the
    reference model (alternating, medians), fidelity against fp32 on titles and batch invariance
    on the reference model and on all-MiniLM-L6-v2."""
    from bench import roofline

    sample, probe = titles[:512], titles[2000:2040]
    longer = sorted(titles, key=len)[-31:]
    rows: dict[str, dict] = {}
    for label, artifact in (("minilm", minilm), ("reference", ref)):
        fp32_runner = EncoderRunner(artifact, artifact / "encoder.onnx")
        fp32 = onnx.load(str(artifact / "encoder.onnx"))
        # all-MiniLM-L6-v2: 12 heads, hidden 384; the reference model: XLM-R base.
        heads, hidden = (12, 384) if label == "minilm" else (XLMR_BASE["num_attention_heads"], XLMR_BASE["hidden_size"])
        graphs = _int8_variants(fp32, _calibration(fp32_runner), heads, hidden)
        reference = fp32_runner(sample, 32)
        del fp32
        for name, graph in graphs.items():
            runner = EncoderRunner(artifact, graph)
            cosine = cosine_rows(reference, runner(sample, 32))
            alone = np.concatenate([runner([t], 1) for t in probe])
            batched = np.concatenate([runner([*longer, t], 32)[-1:] for t in probe])
            rows.setdefault(name, {"variant": name})
            rows[name] |= {f"{label}_min_cosine": float(cosine.min()), f"{label}_mean_cosine": float(cosine.mean()),
                           f"{label}_batch_invariance": float(cosine_rows(alone, batched).min())}
            print(json.dumps(rows[name]), flush=True)
        if label == "minilm":
            continue
        fused_fp32 = EncoderRunner(artifact, _fused_fp32(artifact, heads, hidden))
        fused_cosine = cosine_rows(reference, fused_fp32(sample, 32))
        del fused_fp32
        # Speed: every variant in this process, taking turns, `repeats` rounds, medians.
        runners = {name: EncoderRunner(artifact, graph) for name, graph in graphs.items()}
        profile_feeds = {batch: [{n: t[n] for n in runners["shipped"].inputs}
                                 for t in (runners["shipped"].tokenizer(sample[i:i + batch])
                                           for i in range(0, batch * (100 if batch == 1 else 8), batch))]
                         for batch in (1, 32)}
        profiles = {f"{name} @{batch}": profile_groups(graphs[name], feeds, 3 if batch == 1 else 2)
                    for name in ("shipped", "fused + MatMulIntegerToFloat + reciprocal")
                    for batch, feeds in profile_feeds.items()}
        timings = {name: {"p50_ms": [], "b8": [], "b32": []} for name in runners}
        for round_ in range(repeats):
            for name, runner in runners.items():
                timings[name]["p50_ms"].append(p50_ms(runner, sample))
                timings[name]["b8"].append(rate(runner, sample, 8))
                timings[name]["b32"].append(rate(runner, sample, 32))
            print(f"round {round_ + 1}: " + json.dumps({n: [round(v[-1], 1) for v in t.values()]
                                                         for n, t in timings.items()}), flush=True)
        work = {batch: _encoder_ops(runners["shipped"], sample, batch) for batch in (8, 32)}
        ops = {batch: w[0] for batch, w in work.items()}
        del runners
        # The peak as bench.speed takes it: the best rate over the batches' token counts.
        peak = max(roofline.matmul_rate("int8", int(w[1]), XLMR_BASE["hidden_size"], XLMR_BASE["intermediate_size"])
                   for w in work.values())
        for name, t in timings.items():
            rows[name] |= {"p50_ms": float(np.median(t["p50_ms"])), "titles_per_s_b8": float(np.median(t["b8"])),
                           "titles_per_s_b32": float(np.median(t["b32"])),
                           **{f"roofline_share_b{b}": ops[b] * float(np.median(t[f"b{b}"])) / len(sample) / peak
                              for b in (8, 32)},
                           "spread_b32": f"{min(t['b32']):.0f}-{max(t['b32']):.0f}"}
    return {"variants": list(rows.values()), "profiles": profiles, "int8_peak_ops_per_s": peak,
            "fused_fp32_vs_fp32": {"min_cosine": float(fused_cosine.min()), "mean_cosine": float(fused_cosine.mean())}}


def _fused_fp32(artifact: Path, heads: int, hidden: int) -> bytes:
    from jobbert_onnx.export.fusion import fuse_encoder

    return fuse_encoder(onnx.load(str(artifact / "encoder.onnx")), heads, hidden)[0].SerializeToString()


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
    m = result["machine"]
    lines = [f"Levers, measured on {m['cpu']}, {m['cores']} cores, onnxruntime {m['versions'].get('onnxruntime')}; "
             f"{result['date']}. Speed: JobBERT-v3-sized encoder (random weights); fidelity: all-MiniLM-L6-v2 "
             "encoder against its fp32 graph on 2,000 titles.", ""]
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
    for title, key, columns in sections:
        if key in result:
            lines += [f"### {title}", ""] + _table(result[key], columns) + [""]
    if "int8_kernels" in result:
        lines += _int8_kernels_markdown(result["int8_kernels"])
    return "\n".join(lines)


def _int8_kernels_markdown(section: dict) -> list[str]:
    profiles = section["profiles"]
    groups = list(dict.fromkeys(g for p in profiles.values() for g in p if g not in ("run", "kernels")))
    header = " | ".join(f"{name} µs | share" for name in profiles)
    lines = ["### int8 encoder profile (onnxruntime profiler, reference model, µs per run)", "",
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

    from bench.real_models import minilm_path
    from jobbert_onnx.export import ExportConfig, export_model

    model = build_reference_model(args.cache / "reference-model", all_titles)
    artifacts = prepare_artifacts(model, args.cache, ("fp32", "int8"))
    work = Path(tempfile.mkdtemp(prefix="jobbert-levers-"))
    minilm = export_model(ExportConfig(model=str(minilm_path()), output=work / "minilm-fp32", show_progress=False))
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
        "int8_kernels": lambda: int8_kernels(artifacts["fp32"], minilm, all_titles),
    }
    for name, run in sections.items():
        if args.only and name not in args.only:
            continue
        print(f"[levers] {name}", file=sys.stderr, flush=True)
        result[name] = run()
    shutil.rmtree(work, ignore_errors=True)
    write_atomically(args.results / "levers.json", json.dumps(result, indent=2) + "\n")
    write_atomically(args.results / "levers.md", to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
