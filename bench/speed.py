"""Speed, memory and fidelity against PyTorch, in one run: `python -m bench.speed --data PATH`.

The model has JobBERT-v3's exact shape with random weights (`bench.reference_model`). Every
variant runs in its own long-lived process (`bench.worker`), and the variants take turns, batch
size by batch size, for several repeats; medians are quoted. Variants:

* `pytorch`: sentence-transformers on PyTorch fp32. At batch 8 it is the seed recipe of the model
  card (length-sorted batches of 8); at 32 and 128 it looks for PyTorch's own best batch.
* `onnx-fp32`, `onnx-fp16`, `onnx-int8`: this project's runtime on the CPU.
* the peers (`bench.peers`, `--peers`, each in its own venv): `st-onnx-fp32`/`-int8`
  (sentence-transformers' ONNX backend), `fastembed-fp32`/`-int8` and `openvino-fp32`/`-int8`
  (OpenVINO on our encoder.onnx, int8 by NNCF; the inference precision OpenVINO picked is recorded
  in `variant_info`), at batch 8 and 32. They have no Dense head: they embed the pooled vector, and
  are compared with PyTorch's pooled output.

With peers, it also measures them on real weights (all-mpnet-base-v2): int8 fidelity against
PyTorch fp32 on job titles, and batch invariance, beside this project's own exports.

Writes `speed.json`, `speed.md`, `speed.png` (throughput against batch size) and, with peers,
`peers.md` to `--results`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench import peers as peer_setup
from bench import roofline
from bench.artifacts import HERE, folder_mb, graph_mb, prepare_artifacts
from bench.machine import machine_info
from bench.measure import batch_invariance, cosine_rows, invariance_context, write_results
from bench.reference_model import XLMR_BASE, build_reference_model
from bench.worker import Worker
from bench.speed_report import SEED_BATCH, peers_markdown, plot, targets, to_markdown
from bench.workload import DataError, load_tasks, skill_lists, unique_titles
from jobbert_onnx.runtime.files import write_atomically

ONNX_BATCHES = (1, 8, 32, 128)
PYTORCH_BATCHES = (8, 32, 128)
PEER_BATCHES = (8, 32)
REAL_WEIGHTS_BATCH = 32


def _log(message: str) -> None:
    print(f"[speed] {message}", file=sys.stderr, flush=True)


# -- the run ----------------------------------------------------------------------------------
def _cosines(reference: np.ndarray, embeddings: np.ndarray) -> dict[str, float]:
    cosine = cosine_rows(reference, embeddings)
    return {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}


def run_speed(data: Path, cache: Path, repeats: int, n_titles: int, n_skills: int, latency_count: int,
              peers: tuple[str, ...] = peer_setup.PEERS, real_titles: int = 1000, reuse: bool = False) -> dict:
    tasks = load_tasks(data)
    all_titles = unique_titles(tasks)
    titles = all_titles[:n_titles]
    skills = skill_lists(all_titles, n_skills)
    for peer in peers:  # fail before the long part when a peer's venv is missing
        peer_setup.peer_python(peer)
    model = build_reference_model(cache / "reference-model", all_titles)
    artifacts = prepare_artifacts(model, cache, reuse=reuse)
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
    variant_info = {name: worker.info for name, worker in workers.items() if worker.info}
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
    rows = [roofline.padded_tokens(workload_lengths, b)[0] // max(1, -(-len(titles) // b)) for b in (8, 32, 128)]
    peaks = {p: max(roofline.matmul_rate(p, r, hidden, ffn) for r in rows) for p in ("fp32", "int8")}
    medians = {name: {str(b): statistics.median(v) for b, v in rates.items()} for name, rates in throughput.items()}
    achieved = roofline.achieved_rates(medians, workload_lengths, peaks, XLMR_BASE)

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
        "artifacts_reused": reuse,
        "threads": "library defaults (PyTorch: torch.get_num_threads(); onnxruntime: one per physical core)",
        "artifact_mb": {f"onnx-{p}": folder_mb(a) for p, a in artifacts.items()}
                       | {name: graph_mb(path, file) for name, (_, path, _, file) in variants.items()
                          if file},
        "throughput": medians,
        "throughput_runs": {name: {str(b): v for b, v in rates.items()} for name, rates in throughput.items()},
        "skill_lists_per_second": {name: median(v) for name, v in skills_rate.items()},
        "latency_ms": {name: {k: median(v) for k, v in values.items()} for name, values in latency.items()},
        "cold_start_s": {name: median(v) for name, v in cold.items()},
        "cold_start_runs": cold,
        "peak_rss_mb": peak_rss,
        "variant_info": variant_info,
        "fidelity_vs_pytorch": fidelity,
        "fidelity_reference": fidelity_reference,
        "int8_batch_invariance_min_cosine": invariance,
        "roofline": {"peak_ops_per_second": peaks, "rows_tried": rows, "achieved": achieved},
    }
    if peers:
        result["peers"] = {peer: {"versions": peer_setup.peer_versions(peer)} for peer in peers}
        result["peers_real_weights"] = real_weights(peers, all_titles[:real_titles], cache, scratch, reuse)
    return result


# -- the peers on real weights ----------------------------------------------------------------
def real_weights(peers: tuple[str, ...], titles: list[str], cache: Path, scratch: Path, reuse: bool = False) -> dict:
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
            ours |= prepare_artifacts(model, cache, (precision,), name="mpnet", reuse=reuse)
        except ValidationError as exc:
            failures[f"onnx-{precision}"] = f"fails validation: {exc}"
            _log(f"mpnet {precision}: {failures[f'onnx-{precision}']}")
    for peer in ("fastembed", "openvino"):
        if peer in peers and "fp32" not in ours:
            raise peer_setup.PeerError(f"mpnet: {peer} needs this project's fp32 export, which failed.")
    folders = peer_setup.prepare(peers, "mpnet", model, ours.get("fp32"), cache, peer_setup.ST_INT8_CONFIGS)
    systems = {"pytorch": ("pytorch", model, None, None)}
    systems |= {f"onnx-{p}": ("onnx", a, None, None) for p, a in ours.items()}
    systems |= peer_setup.variants(peers, folders, peer_setup.ST_INT8_CONFIGS)

    workload = scratch / "real-workload.json"
    workload.write_text(json.dumps({"titles": titles, "skills": []}), encoding="utf-8")
    probes, context = invariance_context(titles)
    embeddings, invariance, info = {}, {}, {}
    for name, (kind, path, python, file) in systems.items():
        _log(f"real weights: {name}")
        worker = Worker(kind, path, workload, python=python, file=file)
        worker.ask(op="embed", texts=titles, batch=REAL_WEIGHTS_BATCH, head=None,
                   save=str(scratch / f"real-{name}.npy"))
        worker.ask(op="invariance", probes=probes, context=context, head=None,
                   save=str(scratch / f"real-{name}-invariance.npy"))
        worker.close()
        info[name] = worker.info
        embeddings[name] = np.load(scratch / f"real-{name}.npy")
        alone, batched = np.load(scratch / f"real-{name}-invariance.npy")
        invariance[name] = float(cosine_rows(alone, batched).min())
    rows = {name: {**(_cosines(embeddings["pytorch"], embeddings[name]) if name != "pytorch" else {}),
                   "batch_invariance_min_cosine": invariance[name], **({"info": info[name]} if info[name] else {})}
            for name in systems}
    rows |= {name: {"error": message} for name, message in failures.items()}
    return {"model": "all-mpnet-base-v2 (real weights; Transformer + mean Pooling, Normalize dropped for the peers)",
            "titles": len(titles), "batch": REAL_WEIGHTS_BATCH, "invariance_probes": len(probes),
            "systems": rows}


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
    parser.add_argument("--reuse", action="store_true",
                        help="reuse complete cached exports even if the exporter's code changed since (the results say so)")
    args = parser.parse_args(argv)
    try:
        result = run_speed(args.data, args.cache, args.repeats, args.titles, args.skills, args.latency_titles,
                           peer_setup.selected(args.peers), args.real_titles, args.reuse)
    except (DataError, peer_setup.PeerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["targets"] = targets(result)
    markdown = to_markdown(result)
    write_results(args.results, "speed", result, markdown)
    peers = peers_markdown(result)
    if peers:
        write_atomically(args.results / "peers.md", peers)
    plot(result, args.results / "speed.png")
    print(markdown + ("\n" + peers if peers else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
