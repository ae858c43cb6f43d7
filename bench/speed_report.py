"""The speed benchmark's report: its targets, tables and plot, from a `speed.json` result."""

from __future__ import annotations

from pathlib import Path

from bench import peers as peer_setup
from bench.plots import log2_lines

SEED_BATCH = 8


def targets(result: dict) -> list[dict]:
    """The issue's speed, size, memory and start-up targets, each with its measured figure."""
    tp = result["throughput"]
    seed = tp["pytorch"][str(SEED_BATCH)]
    pytorch_best = max(tp["pytorch"].values())
    int8_best = max(tp["onnx-int8"].values())
    rows = [
        ("int8 throughput at batch 8 vs seed recipe", tp["onnx-int8"]["8"] / seed, ">= 3x", lambda v: v >= 3),
        ("best int8 throughput vs PyTorch's best batch", int8_best / pytorch_best, ">= 3x", lambda v: v >= 3),
        ("int8 p50 latency vs PyTorch's", result["latency_ms"]["onnx-int8"]["p50_ms"]
         / result["latency_ms"]["pytorch"]["p50_ms"], "<= 1/8 (0.125)", lambda v: v <= 0.125),
        ("fp32 throughput at batch 8 vs seed recipe", tp["onnx-fp32"]["8"] / seed, ">= 1.5x", lambda v: v >= 1.5),
        ("fp32 min cosine vs PyTorch (titles)", result["fidelity_vs_pytorch"]["onnx-fp32"]["titles"]["min_cosine"],
         ">= 0.99999", lambda v: v >= 0.99999),
        ("int8 artifact size (MB)", result["artifact_mb"]["onnx-int8"], "<= 300", lambda v: v <= 300),
        ("int8 peak RSS vs PyTorch's", result["peak_rss_mb"]["onnx-int8"] / result["peak_rss_mb"]["pytorch"],
         "<= 0.40", lambda v: v <= 0.40),
        ("int8 cold start (s)", result["cold_start_s"]["onnx-int8"], "< 2", lambda v: v < 2),
        ("int8 batch invariance, min cosine", result["int8_batch_invariance_min_cosine"], ">= 0.9999",
         lambda v: v >= 0.9999),
    ]
    rows += peer_targets(result)
    return [{"target": name, "measured": value, "goal": goal, "met": bool(check(value))}
            for name, value, goal, check in rows]


def _peer_names(result: dict, precision: str) -> list[str]:
    """The peers' variants at `precision` that the run measured (e.g. st-onnx-int8, fastembed-int8)."""
    return [name for name in result["throughput"]
            if not name.startswith(("onnx-", "pytorch")) and name.endswith(f"-{precision}")]


def peer_targets(result: dict) -> list[tuple]:
    """Ours against the best peer of the same run; none when the run had no peers."""
    tp, latency = result["throughput"], result["latency_ms"]
    rows = []
    int8_peers, fp32_peers = _peer_names(result, "int8"), _peer_names(result, "fp32")
    if int8_peers:
        fastest = max(int8_peers, key=lambda n: tp[n]["32"])
        rows.append((f"int8 throughput at batch 32 vs the best peer's int8 ({fastest})",
                     tp["onnx-int8"]["32"] / tp[fastest]["32"], ">= 1.3x", lambda v: v >= 1.3))
        quickest = min(int8_peers, key=lambda n: latency[n]["p50_ms"])
        rows.append((f"int8 p50 latency vs the best peer's int8 ({quickest})",
                     latency["onnx-int8"]["p50_ms"] / latency[quickest]["p50_ms"], "<= 0.6", lambda v: v <= 0.6))
        rows.append(("int8 p99 latency vs its p50", latency["onnx-int8"]["p99_ms"] / latency["onnx-int8"]["p50_ms"],
                     "<= 1.5", lambda v: v <= 1.5))
    if fp32_peers:
        quickest = min(fp32_peers, key=lambda n: latency[n]["p50_ms"])
        rows.append((f"fp32 p50 latency vs the best peer's fp32 ({quickest})",
                     latency["onnx-fp32"]["p50_ms"] / latency[quickest]["p50_ms"], "<= 1.0", lambda v: v <= 1.0))
    return rows


PEER_NOTES = {
    "st": "`st-onnx`: sentence-transformers {sentence-transformers} with its ONNX backend (optimum {optimum}, "
          "optimum-onnx {optimum-onnx}, transformers {transformers}, torch {torch}, onnxruntime {onnxruntime}): "
          "`SentenceTransformer(path, backend=\"onnx\")`, int8 = `export_dynamic_quantized_onnx_model(model, "
          "\"avx512_vnni\", path)`.",
    "fastembed": "`fastembed`: fastembed {fastembed} (onnxruntime {onnxruntime}, tokenizers {tokenizers}), "
                 "`TextEmbedding.add_custom_model` with mean pooling and no normalization on this project's fp32 "
                 "`encoder.onnx`; int8 = onnxruntime `quantize_dynamic` of it with the avx512_vnni settings "
                 "(int8 per-channel weights, uint8 activations, one scale per tensor).",
    "openvino": "`openvino`: OpenVINO {openvino} (nncf {nncf}, tokenizers {tokenizers}): this project's fp32 "
                "`encoder.onnx` converted to an IR with fp32 weights, `Core().compile_model(ir, \"CPU\")` at "
                "OpenVINO's defaults, mean pooling in numpy; int8 = `nncf.quantize(ir, dataset, "
                "model_type=ModelType.TRANSFORMER, subset_size=300)` calibrated on 300 of this project's built-in "
                "calibration texts.",
}


def inference_precision(result: dict, name: str) -> str | None:
    """The inference precision a variant's library reported it ran at (OpenVINO's
    INFERENCE_PRECISION_HINT, e.g. f32 or bf16), or None where it reported none."""
    return result.get("variant_info", {}).get(name, {}).get("inference_precision")


def peers_note(result: dict) -> list[str]:
    """What the peers are, their versions, and the head difference."""
    if not result.get("peers"):
        return []
    lines = ["", "Peers (`bench/peers.py`), each in its own venv and the same alternating run, at batch 8 and 32:", ""]
    for peer, info in result["peers"].items():
        versions = {name: "?" for name in peer_setup.PACKAGES[peer]} | info["versions"]
        lines.append("- " + PEER_NOTES[peer].format(**versions))
    ran = {name: inference_precision(result, name) for name in result["throughput"]}
    if ran := {name: precision for name, precision in ran.items() if precision}:  # OpenVINO's variants only
        lines.append("- Inference precision OpenVINO chose on this CPU (`INFERENCE_PRECISION_HINT` of the compiled "
                     "model; bf16 where the CPU has AMX or AVX512-BF16): "
                     + ", ".join(f"{name} {precision}" for name, precision in ran.items()) + ".")
    lines += ["- **No Dense head in the peers**: they embed the pooled 768-d vector (marked *pooled*), and their "
              "cosine is against PyTorch's pooled output (the same model without its Asym module). Ours run the "
              "anchor head (one 768×1024 matmul per title) and compare against PyTorch's anchor output; the "
              "skill-list column runs our positive head and the peers' pooled vector."]
    return lines


def to_markdown(result: dict) -> str:
    m = result["machine"]
    simd = ", ".join(flag for flag, present in m["simd"].items() if present) or "none"
    w = result["workload"]
    names = list(result["throughput"])
    batches = sorted({int(b) for rates in result["throughput"].values() for b in rates})
    lines = [
        f"Speed on {m['cpu']}, {m['cores']} cores ({simd}), {m['memory_gib']} GiB; onnxruntime "
        f"{m['versions'].get('onnxruntime')}, numpy {m['versions'].get('numpy')}, torch {m['versions'].get('torch')}; "
        f"{result['date']}.",
        "",
        f"Model: {result['model']['shape']}, random weights. Workload: {w['titles']} unique job titles "
        f"(en, de, es, zh; mean {w['mean_tokens_per_title']:.1f} tokens with special tokens), "
        f"{w['skill_lists']} skill lists (mean {w['mean_skill_list_tokens_untruncated']:.0f} tokens before the "
        f"64-token cut), medians of {w['repeats']} alternating repeats."
        + (" Artifacts reused from the cache (`--reuse`): exported by earlier code with the same recipe."
           if result.get("artifacts_reused") else ""),
        "",
        "| variant | " + " | ".join(f"titles/s @{b}" for b in batches)
        + " | skill lists/s @8 | p50 / p99 ms | cold start s | peak RSS MB | size MB | min / mean cos |",
        "|---|" + "---|" * (len(batches) + 6),
    ]
    for name in names:
        rates = result["throughput"][name]
        cells = [f"{rates[str(b)]:.1f}" if str(b) in rates else "—" for b in batches]
        lat = result["latency_ms"][name]
        fid = result["fidelity_vs_pytorch"].get(name)
        fid_cell = f"{fid['titles']['min_cosine']:.5f} / {fid['titles']['mean_cosine']:.5f}" if fid else "reference"
        size = result["artifact_mb"].get(name, result["model"]["size_mb"])
        pooled = result.get("fidelity_reference", {}).get(name) == "pytorch-pooled"
        notes = ["pooled"] if pooled else []
        if (precision := inference_precision(result, name)) and precision != "f32":
            notes.append(f"{precision} inference")  # e.g. OpenVINO's fp32 IR run at bf16
        label = f"{name} (batch 8 = seed recipe)" if name == "pytorch" else \
            f"{name} ({', '.join(notes)})" if notes else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {result['skill_lists_per_second'][name]:.1f} | "
                     f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} | {result['cold_start_s'][name]:.2f} | "
                     f"{result['peak_rss_mb'][name]:.0f} | {size:.0f} | {fid_cell} |")
    lines += peers_note(result)
    roof = result["roofline"]
    lines += ["", f"Roofline: onnxruntime's best rate on one encoder layer's matmuls: fp32 "
              f"{roof['peak_ops_per_second']['fp32'] / 1e9:.0f} GOP/s, int8 "
              f"{roof['peak_ops_per_second']['int8'] / 1e9:.0f} GOP/s. End to end, share of that rate:", "",
              "| variant | " + " | ".join(f"@{b}" for b in batches if b != 1) + " |",
              "|---|" + "---|" * len([b for b in batches if b != 1])]
    for name, per_batch in roof["achieved"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{per_batch[str(b)]['fraction_of_peak']:.0%} ({per_batch[str(b)]['ops_per_second'] / 1e9:.0f} GOP/s)"
            for b in batches if b != 1) + " |")
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in targets(result):
        lines.append(f"| {t['target']} | {t['measured']:.3f} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


REAL_WEIGHT_LABELS = {
    "pytorch": "PyTorch fp32 (sentence-transformers)",
    "onnx-fp32": "jobbert-onnx fp32", "onnx-int8": "jobbert-onnx int8",
    "st-onnx-fp32": "sentence-transformers ONNX fp32",
    "st-onnx-int8": "sentence-transformers ONNX int8 (avx512_vnni)",
    "st-onnx-int8-avx2": "sentence-transformers ONNX int8 (avx2: uint8 weights)",
    "fastembed-fp32": "fastembed fp32 (our encoder.onnx)",
    "fastembed-int8": "fastembed int8 (quantize_dynamic)",
    "openvino-fp32": "OpenVINO fp32 (our encoder.onnx as IR)",
    "openvino-int8": "OpenVINO int8 (NNCF post-training quantization)",
}


def peers_markdown(result: dict) -> str:
    """The "peers on real weights" table; empty when the run had no peers."""
    real = result.get("peers_real_weights")
    if not real:
        return ""
    lines = [f"Peers on real weights: {real['model']}. Cosine against PyTorch fp32 over {real['titles']} unique job "
             f"titles from the data (batch {real['batch']}); batch invariance: {real['invariance_probes']} titles, "
             "each alone against the same title in a batch with the 31 longest titles (min cosine).", "",
             "| system | min cos | mean cos | batch invariance min cos |", "|---|---|---|---|"]
    for name, row in real["systems"].items():
        label = REAL_WEIGHT_LABELS.get(name, name)
        if precision := row.get("info", {}).get("inference_precision"):
            label += f", {precision} inference"
        if "error" in row:
            lines.append(f"| {label} | {row['error'].splitlines()[0]} | | |")
        elif name == "pytorch":
            lines.append(f"| {label} | reference | reference | {row['batch_invariance_min_cosine']:.5f} |")
        else:
            lines.append(f"| {label} | {row['min_cosine']:.5f} | {row['mean_cosine']:.5f} | "
                         f"{row['batch_invariance_min_cosine']:.5f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    series = {name: [(int(b), rate) for b, rate in rates.items()] for name, rates in result["throughput"].items()}
    log2_lines(path, series, "batch size", f"JobBERT-v3-sized model, {result['machine']['cores']} CPU cores")
