"""Speed, memory and fidelity against PyTorch, in one run: `python -m bench.speed --data PATH`.

The model has JobBERT-v3's exact shape with random weights (`bench.reference_model`). Every
variant runs in its own long-lived process (`bench.worker`), and the variants take turns, batch
size by batch size, for several repeats; medians are quoted. Variants:

* `pytorch`: sentence-transformers on PyTorch fp32. At batch 8 it is the seed recipe of the model
  card (length-sorted batches of 8); at 32 and 128 it looks for PyTorch's own best batch.
* `onnx-fp32`, `onnx-fp16`, `onnx-int8`: this project's runtime on the CPU.
* the peers (`bench.peers`, `--peers`, each in its own venv): `st-onnx-fp32`/`-int8`
  (sentence-transformers' ONNX backend) and `fastembed-fp32`/`-int8`, at batch 8 and 32. They have
  no Dense head: they embed the pooled vector, and are compared with PyTorch's pooled output.

With peers, it also measures them on real weights (all-mpnet-base-v2): int8 fidelity against
PyTorch fp32 on job titles, and batch invariance, beside this project's own exports.

Writes `speed.json`, `speed.md`, `speed.png` (throughput against batch size) and, with peers,
`peers.md` to `--results`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from bench import peers as peer_setup
from bench import roofline
from bench.machine import machine_info
from bench.measure import cosine_rows
from bench.reference_model import XLMR_BASE, build_reference_model
from bench.worker import Worker
from bench.workload import DataError, load_tasks, skill_lists, unique_titles

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_BATCHES = (1, 8, 32, 128)
PYTORCH_BATCHES = (8, 32, 128)
PEER_BATCHES = (8, 32)
SEED_BATCH = 8
REAL_WEIGHTS_BATCH = 32


def _log(message: str) -> None:
    print(f"[speed] {message}", file=sys.stderr, flush=True)


# -- artifacts --------------------------------------------------------------------------------
def _model_fingerprint(model: Path) -> bytes:
    """The reference model's recipe stamp; for any other folder, its files' names, sizes and times."""
    stamp = model / ".reference-model.json"
    if stamp.exists():
        return stamp.read_bytes()
    files = sorted((str(p.relative_to(model)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in model.rglob("*") if p.is_file())
    return json.dumps([str(model.resolve()), files]).encode()


def _exporter_key(model: Path, precision: str) -> str:
    """Changes whenever the exporter's code, the model or the tool versions change."""
    digest = hashlib.sha256()
    for source in sorted((HERE.parent / "export").glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(_model_fingerprint(Path(model)))
    for name in ("torch", "onnx", "onnxruntime", "transformers", "sentence-transformers"):
        digest.update(metadata.version(name).encode())
    digest.update(precision.encode())
    return digest.hexdigest()


def prepare_artifacts(model: Path, cache: Path, precisions=PRECISIONS, name: str = "reference") -> dict[str, Path]:
    """Export `model` at each precision into `cache` as `{name}-{precision}`, reusing an export
    made by the same code."""
    from jobbert_onnx.export import ExportConfig, export_model

    artifacts = {}
    for precision in precisions:
        folder = cache / f"{name}-{precision}"
        stamp = cache / f"{name}-{precision}.key"
        key = _exporter_key(model, precision)
        if not (folder.exists() and stamp.exists() and stamp.read_text() == key):
            _log(f"exporting {name} at {precision}")
            start = time.perf_counter()
            export_model(ExportConfig(model=str(model), output=folder, precision=precision, overwrite=True,
                                      show_progress=False))
            stamp.write_text(key)
            _log(f"  {precision} exported in {time.perf_counter() - start:.0f} s")
        artifacts[precision] = folder
    return artifacts


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6, 1)


# -- token accounting for the roofline ----------------------------------------------------------
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


def invariance_context(titles: list[str], count: int = 100) -> tuple[list[str], list[str]]:
    """The batch-invariance probes (the first `count` titles) and the 31 longest titles that each
    probe joins, so a batch of 32 is padded around it."""
    return titles[:count], sorted(titles, key=len)[-31:]


def batch_invariance(artifact: Path, titles: list[str], count: int = 100) -> float:
    """Min cosine between a title embedded alone and the same title inside a batch of the 31
    longest titles (so the batch is padded around it)."""
    from jobbert_onnx.runtime import Embedder

    embedder = Embedder(artifact)
    probes, longest = invariance_context(titles, count)
    alone = embedder.encode(probes, batch_size=1)
    batched = np.concatenate([embedder.encode([*longest, t], batch_size=32)[-1:] for t in probes])
    return float(cosine_rows(alone, batched).min())


def achieved_rates(throughput: dict[str, dict[str, float]], lengths: list[int],
                   peaks: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """Each ONNX variant's encoder operations per second at each batch size, and its share of
    the matmul peak of its precision (fp16 against fp32's), from titles/s over `lengths`."""
    hidden, ffn, layers = XLMR_BASE["hidden_size"], XLMR_BASE["intermediate_size"], XLMR_BASE["num_hidden_layers"]
    achieved = {}
    for name, rates in throughput.items():
        if not name.startswith("onnx-"):  # ours only: the peers batch differently
            continue
        peak = peaks["int8" if name.endswith("int8") else "fp32"]
        achieved[name] = {}
        for batch, titles_per_second in rates.items():
            tokens, sequence = padded_tokens(lengths, int(batch))
            ops = tokens * roofline.encoder_ops_per_token(layers, hidden, ffn, sequence)
            ops_per_second = ops * titles_per_second / len(lengths)
            achieved[name][batch] = {"ops_per_second": ops_per_second, "fraction_of_peak": ops_per_second / peak}
    return achieved


# -- the run ----------------------------------------------------------------------------------
def graph_mb(folder: Path, file: str) -> float:
    """Size of one ONNX file in `folder` and its external data, if any (MB)."""
    path = Path(folder) / file
    return round(sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.is_file()) / 1e6, 1)


def _cosines(reference: np.ndarray, embeddings: np.ndarray) -> dict[str, float]:
    cosine = cosine_rows(reference, embeddings)
    return {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}


def run_speed(data: Path, cache: Path, repeats: int, n_titles: int, n_skills: int, latency_count: int,
              peers: tuple[str, ...] = peer_setup.PEERS, real_titles: int = 1000) -> dict:
    tasks = load_tasks(data)
    all_titles = unique_titles(tasks)
    titles = all_titles[:n_titles]
    skills = skill_lists(all_titles, n_skills)
    for peer in peers:  # fail before the long part when a peer's venv is missing
        peer_setup.peer_python(peer)
    model = build_reference_model(cache / "reference-model", all_titles)
    artifacts = prepare_artifacts(model, cache)
    peer_folders = peer_setup.prepare(peers, "reference", model, artifacts["fp32"], cache) if peers else {}

    from jobbert_onnx.runtime.manifest import Manifest
    from jobbert_onnx.runtime.tokenization import TextTokenizer
    from tokenizers import Tokenizer

    manifest = Manifest.load(artifacts["fp32"])
    tokenizer = TextTokenizer.from_file(artifacts["fp32"] / "tokenizer.json", manifest.tokenizer)
    title_lengths = [int(m.sum()) for m in tokenizer(all_titles)["attention_mask"]]
    workload_lengths = title_lengths[:n_titles]
    untruncated = Tokenizer.from_file(str(artifacts["fp32"] / "tokenizer.json"))  # counts past the 64 limit
    untruncated.no_truncation()
    untruncated.no_padding()
    skill_tokens = [len(untruncated.encode(s).ids) for s in skills]

    # name -> (worker kind, folder, python (None: this one), ONNX file for the peers)
    variants = {"pytorch": ("pytorch", model, None, None)}
    variants |= {f"onnx-{p}": ("onnx", a, None, None) for p, a in artifacts.items()}
    variants |= peer_setup.variants(peers, peer_folders)
    batches_of = {name: PYTORCH_BATCHES if name == "pytorch" else ONNX_BATCHES if name.startswith("onnx-")
                  else PEER_BATCHES for name in variants}
    scratch = Path(tempfile.mkdtemp(prefix="jobbert-bench-"))
    workload_file = scratch / "workload.json"
    workload_file.write_text(json.dumps({"titles": titles, "skills": skills}), encoding="utf-8")

    def start(name: str) -> Worker:
        kind, path, python, file = variants[name]
        return Worker(kind, path, workload_file, python=python, file=file)

    cold: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name in variants:
            worker = start(name)
            cold[name].append(worker.cold_start_s)
            worker.close()
        _log(f"cold starts, repeat {repeat + 1}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in cold.items()))

    workers = {name: start(name) for name in variants}
    throughput: dict[str, dict[int, list[float]]] = {name: {} for name in variants}
    skills_rate: dict[str, list[float]] = {name: [] for name in variants}
    latency: dict[str, dict[str, list[float]]] = {name: {"p50_ms": [], "p99_ms": []} for name in variants}
    for repeat in range(repeats):
        for batch in sorted(set().union(*batches_of.values())):
            for name, worker in workers.items():
                if batch not in batches_of[name]:
                    continue
                save = str(scratch / f"{name}-titles.npy") if repeat == 0 and batch == SEED_BATCH else None
                result = worker.ask(op="throughput", texts="titles", batch=batch, head="anchor", save=save)
                throughput[name].setdefault(batch, []).append(result["per_second"])
            _log(f"repeat {repeat + 1}, batch {batch}: " + ", ".join(
                f"{n} {v[batch][-1]:.1f}/s" for n, v in throughput.items() if batch in v))
        for name, worker in workers.items():
            save = str(scratch / f"{name}-skills.npy") if repeat == 0 else None
            skills_rate[name].append(worker.ask(op="throughput", texts="skills", batch=SEED_BATCH, head="positive",
                                                save=save)["per_second"])
            for key, value in worker.ask(op="latency", count=latency_count, head="anchor").items():
                latency[name][key].append(value)
        _log(f"repeat {repeat + 1}: latency p50 " + ", ".join(f"{n} {v['p50_ms'][-1]:.1f} ms"
                                                               for n, v in latency.items()))
    peak_rss = {name: worker.close() for name, worker in workers.items()}

    # Ours against PyTorch's anchor/positive output; the peers (no head) against PyTorch's pooled output.
    references = {"pytorch": "pytorch"}
    if peers:
        _log("PyTorch's pooled output (the model without its Asym head), the peers' reference")
        pooled = Worker("pytorch", peer_folders["pooled"], workload_file)
        for kind in ("titles", "skills"):
            pooled.ask(op="throughput", texts=kind, batch=SEED_BATCH, head=None,
                       save=str(scratch / f"pytorch-pooled-{kind}.npy"))
        pooled.close()
    fidelity, fidelity_reference = {}, {}
    for name in variants:
        if name == "pytorch":
            continue
        reference = "pytorch" if name.startswith("onnx-") else "pytorch-pooled"
        fidelity_reference[name] = reference
        fidelity[name] = {kind: _cosines(np.load(scratch / f"{reference}-{kind}.npy"),
                                         np.load(scratch / f"{name}-{kind}.npy")) for kind in ("titles", "skills")}

    _log("measuring batch invariance at int8")
    invariance = batch_invariance(artifacts["int8"], all_titles)

    _log("measuring the matmul roofline")
    hidden, ffn = XLMR_BASE["hidden_size"], XLMR_BASE["intermediate_size"]
    rows = [padded_tokens(workload_lengths, b)[0] // max(1, -(-len(titles) // b)) for b in (8, 32, 128)]
    peaks = {p: max(roofline.matmul_rate(p, r, hidden, ffn) for r in rows) for p in ("fp32", "int8")}
    medians = {name: {str(b): statistics.median(v) for b, v in rates.items()} for name, rates in throughput.items()}
    achieved = achieved_rates(medians, workload_lengths, peaks)

    median = statistics.median
    result = {
        "benchmark": "speed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": {"shape": "JobBERT-v3 (XLM-RoBERTa base, mean pooling, Asym anchor/positive 768->1024 tanh)",
                  "weights": "random", "path": str(model), "size_mb": folder_mb(model)},
        "workload": {
            "data": str(data), "titles": len(titles), "skill_lists": len(skills), "repeats": repeats,
            "latency_titles": latency_count,
            "mean_tokens_per_title": float(np.mean(title_lengths)),
            "mean_tokens_per_workload_title": float(np.mean(workload_lengths)),
            "mean_skill_list_tokens_untruncated": float(np.mean(skill_tokens)),
            "skill_lists_over_64_tokens": sum(t > 64 for t in skill_tokens),
        },
        "threads": "library defaults (PyTorch: torch.get_num_threads(); onnxruntime: one per physical core)",
        "artifact_mb": {f"onnx-{p}": folder_mb(a) for p, a in artifacts.items()}
                       | {name: graph_mb(path, file) for name, (_, path, _, file) in variants.items() if file},
        "throughput": medians,
        "throughput_runs": {name: {str(b): v for b, v in rates.items()} for name, rates in throughput.items()},
        "skill_lists_per_second": {name: median(v) for name, v in skills_rate.items()},
        "latency_ms": {name: {k: median(v) for k, v in values.items()} for name, values in latency.items()},
        "cold_start_s": {name: median(v) for name, v in cold.items()},
        "cold_start_runs": cold,
        "peak_rss_mb": peak_rss,
        "fidelity_vs_pytorch": fidelity,
        "fidelity_reference": fidelity_reference,
        "int8_batch_invariance_min_cosine": invariance,
        "roofline": {"peak_ops_per_second": peaks, "rows_tried": rows, "achieved": achieved},
    }
    if peers:
        result["peers"] = {peer: {"versions": peer_setup.peer_versions(peer)} for peer in peers}
        result["peers_real_weights"] = real_weights(peers, all_titles[:real_titles], cache, scratch)
    return result


# -- the peers on real weights ----------------------------------------------------------------
def real_weights(peers: tuple[str, ...], titles: list[str], cache: Path, scratch: Path) -> dict:
    """Fidelity on the real all-mpnet-base-v2: each system's min/mean cosine against PyTorch fp32
    over `titles` (batch 32), and its batch invariance (a title alone against the same title in a
    batch of the 31 longest titles). This project's rows come from `export_model` with the
    current recipe; an export that fails its own validation is reported as such."""
    from bench.real_models import mpnet_path
    from jobbert_onnx.export.validation import ValidationError

    model = mpnet_path()
    ours: dict[str, Path] = {}
    failures: dict[str, str] = {}
    for precision in ("fp32", "int8"):
        try:
            ours |= prepare_artifacts(model, cache, (precision,), name="mpnet")
        except ValidationError as exc:
            failures[f"onnx-{precision}"] = f"fails validation: {exc}"
            _log(f"mpnet {precision}: {failures[f'onnx-{precision}']}")
    if "fastembed" in peers and "fp32" not in ours:
        raise peer_setup.PeerError("mpnet: fastembed needs this project's fp32 export, which failed.")
    folders = peer_setup.prepare(peers, "mpnet", model, ours.get("fp32"), cache, peer_setup.ST_INT8_CONFIGS)
    systems = {"pytorch": ("pytorch", model, None, None)}
    systems |= {f"onnx-{p}": ("onnx", a, None, None) for p, a in ours.items()}
    systems |= peer_setup.variants(peers, folders, peer_setup.ST_INT8_CONFIGS)

    workload = scratch / "real-workload.json"
    workload.write_text(json.dumps({"titles": titles, "skills": []}), encoding="utf-8")
    probes, context = invariance_context(titles)
    embeddings, invariance = {}, {}
    for name, (kind, path, python, file) in systems.items():
        _log(f"real weights: {name}")
        worker = Worker(kind, path, workload, python=python, file=file)
        worker.ask(op="embed", texts=titles, batch=REAL_WEIGHTS_BATCH, head=None,
                   save=str(scratch / f"real-{name}.npy"))
        worker.ask(op="invariance", probes=probes, context=context, head=None,
                   save=str(scratch / f"real-{name}-invariance.npy"))
        worker.close()
        embeddings[name] = np.load(scratch / f"real-{name}.npy")
        alone, batched = np.load(scratch / f"real-{name}-invariance.npy")
        invariance[name] = float(cosine_rows(alone, batched).min())
    rows = {name: {**(_cosines(embeddings["pytorch"], embeddings[name]) if name != "pytorch" else {}),
                   "batch_invariance_min_cosine": invariance[name]} for name in systems}
    rows |= {name: {"error": message} for name, message in failures.items()}
    return {"model": "all-mpnet-base-v2 (real weights; Transformer + mean Pooling, Normalize dropped for the peers)",
            "titles": len(titles), "batch": REAL_WEIGHTS_BATCH, "invariance_probes": len(probes),
            "systems": rows}


# -- report -----------------------------------------------------------------------------------
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
                     latency["onnx-int8"]["p50_ms"] / latency[quickest]["p50_ms"], "<= 0.8", lambda v: v <= 0.8))
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
}


def peers_note(result: dict) -> list[str]:
    """What the peers are, their versions, and the head difference."""
    if not result.get("peers"):
        return []
    lines = ["", "Peers (`bench/peers.py`), each in its own venv and the same alternating run, at batch 8 and 32:", ""]
    for peer, info in result["peers"].items():
        versions = {name: "?" for name in peer_setup.PACKAGES[peer]} | info["versions"]
        lines.append("- " + PEER_NOTES[peer].format(**versions))
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
        f"64-token cut), medians of {w['repeats']} alternating repeats.",
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
        label = f"{name} (batch 8 = seed recipe)" if name == "pytorch" else f"{name} (pooled)" if pooled else name
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
        if "error" in row:
            lines.append(f"| {label} | {row['error'].splitlines()[0]} | | |")
        elif name == "pytorch":
            lines.append(f"| {label} | reference | reference | {row['batch_invariance_min_cosine']:.5f} |")
        else:
            lines.append(f"| {label} | {row['min_cosine']:.5f} | {row['mean_cosine']:.5f} | "
                         f"{row['batch_invariance_min_cosine']:.5f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, rates in result["throughput"].items():
        batches = sorted(int(b) for b in rates)
        axes.plot(batches, [rates[str(b)] for b in batches], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel("titles per second")
    axes.set_title(f"JobBERT-v3-sized model, {result['machine']['cores']} CPU cores")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` through a temporary file, so a crash never leaves a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial")
    temp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    os.replace(temp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="the job-title-similarity folder (en/ de/ es/ zh/)")
    parser.add_argument("--cache", type=Path, default=HERE / "cache", help="model and artifact cache")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--titles", type=int, default=1024, help="titles per throughput run")
    parser.add_argument("--skills", type=int, default=128, help="skill lists for the positive head")
    parser.add_argument("--latency-titles", type=int, default=200, help="single-title requests per latency run")
    parser.add_argument("--peers", choices=("none", *peer_setup.PEERS, "all"), default="all",
                        help="peers to run beside ours, each from its venv (`make peer-venvs`)")
    parser.add_argument("--real-titles", type=int, default=1000, help="titles for the peers' real-weight fidelity")
    args = parser.parse_args(argv)
    try:
        result = run_speed(args.data, args.cache, args.repeats, args.titles, args.skills, args.latency_titles,
                           peer_setup.selected(args.peers), args.real_titles)
    except (DataError, peer_setup.PeerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["targets"] = targets(result)
    markdown = to_markdown(result)
    write_atomic(args.results / "speed.json", json.dumps(result, indent=2) + "\n")
    write_atomic(args.results / "speed.md", markdown)
    peers = peers_markdown(result)
    if peers:
        write_atomic(args.results / "peers.md", peers)
    png = args.results / "speed.png"
    plot(result, png.with_name(".speed.png.partial.png"))
    os.replace(png.with_name(".speed.png.partial.png"), png)
    print(markdown + ("\n" + peers if peers else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
