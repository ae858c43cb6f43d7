"""What each speed and accuracy lever does, measured: `python -m bench.levers --data PATH`.

Every lever is measured against the configuration the project ships, on the reference-size model
(speed, size) and on the real-weight all-MiniLM-L6-v2 (fidelity against its fp32 graph, batch
invariance). Writes `levers.json` and `levers.md` to `--results`. Slow (about 15 minutes on
2 cores); `make bench` does not run it.

Levers: the int8 recipe, onnxruntime session settings, separate graphs against one fused graph,
batching, and onnxruntime.transformers fusions at fp32.
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
from bench.speed import HERE, prepare_artifacts, write_atomic
from bench.reference_model import build_reference_model
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
    return "\n".join(lines)


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

    from bench.quality import default_model
    from jobbert_onnx.export import ExportConfig, export_model

    model = build_reference_model(args.cache / "reference-model", all_titles)
    artifacts = prepare_artifacts(model, args.cache, ("fp32", "int8"))
    work = Path(tempfile.mkdtemp(prefix="jobbert-levers-"))
    minilm = export_model(ExportConfig(model=default_model(), output=work / "minilm-fp32", show_progress=False))
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
    }
    for name, run in sections.items():
        if args.only and name not in args.only:
            continue
        print(f"[levers] {name}", file=sys.stderr, flush=True)
        result[name] = run()
    shutil.rmtree(work, ignore_errors=True)
    write_atomic(args.results / "levers.json", json.dumps(result, indent=2) + "\n")
    write_atomic(args.results / "levers.md", to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
