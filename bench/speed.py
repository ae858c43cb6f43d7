"""Speed, memory and fidelity against PyTorch, in one run: `python -m bench.speed --data PATH`.

The model has JobBERT-v3's exact shape with random weights (`bench.reference_model`). Every
variant runs in its own long-lived process (`bench.worker`), and the variants take turns, batch
size by batch size, for several repeats; medians are quoted. Variants:

* `pytorch`: sentence-transformers on PyTorch fp32. At batch 8 it is the seed recipe of the model
  card (length-sorted batches of 8); at 32 and 128 it looks for PyTorch's own best batch.
* `onnx-fp32`, `onnx-fp16`, `onnx-int8`: this project's runtime on the CPU.

Writes `speed.json`, `speed.md` and `speed.png` (throughput against batch size) to `--results`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from bench import roofline
from bench.machine import machine_info
from bench.measure import cosine_rows
from bench.reference_model import XLMR_BASE, build_reference_model
from bench.workload import DataError, load_tasks, skill_lists, unique_titles

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_BATCHES = (1, 8, 32, 128)
PYTORCH_BATCHES = (8, 32, 128)
SEED_BATCH = 8


def _log(message: str) -> None:
    print(f"[speed] {message}", file=sys.stderr, flush=True)


# -- artifacts --------------------------------------------------------------------------------
def _exporter_key(model: Path, precision: str) -> str:
    """Changes whenever the exporter's code, the model or the tool versions change."""
    digest = hashlib.sha256()
    for source in sorted((HERE.parent / "export").glob("*.py")):
        digest.update(source.read_bytes())
    digest.update((model / ".reference-model.json").read_bytes())
    for name in ("torch", "onnx", "onnxruntime", "transformers", "sentence-transformers"):
        digest.update(metadata.version(name).encode())
    digest.update(precision.encode())
    return digest.hexdigest()


def prepare_artifacts(model: Path, cache: Path, precisions=PRECISIONS) -> dict[str, Path]:
    """Export `model` at each precision into `cache`, reusing an export made by the same code."""
    from jobbert_onnx.export import ExportConfig, export_model

    artifacts = {}
    for precision in precisions:
        folder = cache / f"reference-{precision}"
        stamp = cache / f"reference-{precision}.key"
        key = _exporter_key(model, precision)
        if not (folder.exists() and stamp.exists() and stamp.read_text() == key):
            _log(f"exporting the reference model at {precision}")
            start = time.perf_counter()
            export_model(ExportConfig(model=str(model), output=folder, precision=precision, overwrite=True,
                                      show_progress=False))
            stamp.write_text(key)
            _log(f"  {precision} exported in {time.perf_counter() - start:.0f} s")
        artifacts[precision] = folder
    return artifacts


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6, 1)


# -- workers ----------------------------------------------------------------------------------
class Worker:
    """A `bench.worker` process; `started` to `ready` is its cold start."""

    def __init__(self, kind: str, path: Path, workload: Path) -> None:
        self.started = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", kind, str(path), str(workload)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE.parent, env=env)
        self.cold_start_s = self._read()["ready"] - self.started

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited with code {self.process.wait()}; see its stderr above.")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> float:
        """Stop the worker; returns its peak RSS in MB."""
        peak = self.ask(op="exit")["peak_rss_mb"]
        self.process.wait(timeout=60)
        return peak


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


def batch_invariance(artifact: Path, titles: list[str], count: int = 100) -> float:
    """Min cosine between a title embedded alone and the same title inside a batch of the 31
    longest titles (so the batch is padded around it)."""
    from jobbert_onnx.runtime import Embedder

    embedder = Embedder(artifact)
    longest = sorted(titles, key=len)[-31:]
    probes = titles[:count]
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
        if name == "pytorch":
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
def run_speed(data: Path, cache: Path, repeats: int, n_titles: int, n_skills: int, latency_count: int) -> dict:
    tasks = load_tasks(data)
    all_titles = unique_titles(tasks)
    titles = all_titles[:n_titles]
    skills = skill_lists(all_titles, n_skills)
    model = build_reference_model(cache / "reference-model", all_titles)
    artifacts = prepare_artifacts(model, cache)

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

    variants = {"pytorch": ("pytorch", model)} | {f"onnx-{p}": ("onnx", a) for p, a in artifacts.items()}
    scratch = Path(tempfile.mkdtemp(prefix="jobbert-bench-"))
    workload_file = scratch / "workload.json"
    workload_file.write_text(json.dumps({"titles": titles, "skills": skills}), encoding="utf-8")

    cold: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name, (kind, path) in variants.items():
            worker = Worker(kind, path, workload_file)
            cold[name].append(worker.cold_start_s)
            worker.close()
        _log(f"cold starts, repeat {repeat + 1}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in cold.items()))

    workers = {name: Worker(kind, path, workload_file) for name, (kind, path) in variants.items()}
    throughput: dict[str, dict[int, list[float]]] = {name: {} for name in variants}
    skills_rate: dict[str, list[float]] = {name: [] for name in variants}
    latency: dict[str, dict[str, list[float]]] = {name: {"p50_ms": [], "p99_ms": []} for name in variants}
    for repeat in range(repeats):
        for batch in sorted(set(ONNX_BATCHES) | set(PYTORCH_BATCHES)):
            for name, worker in workers.items():
                if batch not in (PYTORCH_BATCHES if name == "pytorch" else ONNX_BATCHES):
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

    reference = {kind: np.load(scratch / f"pytorch-{kind}.npy") for kind in ("titles", "skills")}
    fidelity = {}
    for name in variants:
        if name == "pytorch":
            continue
        fidelity[name] = {}
        for kind in ("titles", "skills"):
            cosine = cosine_rows(reference[kind], np.load(scratch / f"{name}-{kind}.npy"))
            fidelity[name][kind] = {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}

    _log("measuring batch invariance at int8")
    invariance = batch_invariance(artifacts["int8"], all_titles)

    _log("measuring the matmul roofline")
    hidden, ffn = XLMR_BASE["hidden_size"], XLMR_BASE["intermediate_size"]
    rows = [padded_tokens(workload_lengths, b)[0] // max(1, -(-len(titles) // b)) for b in (8, 32, 128)]
    peaks = {p: max(roofline.matmul_rate(p, r, hidden, ffn) for r in rows) for p in ("fp32", "int8")}
    medians = {name: {str(b): statistics.median(v) for b, v in rates.items()} for name, rates in throughput.items()}
    achieved = achieved_rates(medians, workload_lengths, peaks)

    median = statistics.median
    return {
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
        "artifact_mb": {f"onnx-{p}": folder_mb(a) for p, a in artifacts.items()},
        "throughput": medians,
        "throughput_runs": {name: {str(b): v for b, v in rates.items()} for name, rates in throughput.items()},
        "skill_lists_per_second": {name: median(v) for name, v in skills_rate.items()},
        "latency_ms": {name: {k: median(v) for k, v in values.items()} for name, values in latency.items()},
        "cold_start_s": {name: median(v) for name, v in cold.items()},
        "cold_start_runs": cold,
        "peak_rss_mb": peak_rss,
        "fidelity_vs_pytorch": fidelity,
        "int8_batch_invariance_min_cosine": invariance,
        "roofline": {"peak_ops_per_second": peaks, "rows_tried": rows, "achieved": achieved},
    }


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
    return [{"target": name, "measured": value, "goal": goal, "met": bool(check(value))}
            for name, value, goal, check in rows]


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
        label = f"{name} (batch 8 = seed recipe)" if name == "pytorch" else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {result['skill_lists_per_second'][name]:.1f} | "
                     f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} | {result['cold_start_s'][name]:.2f} | "
                     f"{result['peak_rss_mb'][name]:.0f} | {size:.0f} | {fid_cell} |")
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
    args = parser.parse_args(argv)
    try:
        result = run_speed(args.data, args.cache, args.repeats, args.titles, args.skills, args.latency_titles)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["targets"] = targets(result)
    markdown = to_markdown(result)
    write_atomic(args.results / "speed.json", json.dumps(result, indent=2) + "\n")
    write_atomic(args.results / "speed.md", markdown)
    png = args.results / "speed.png"
    plot(result, png.with_name(".speed.png.partial.png"))
    os.replace(png.with_name(".speed.png.partial.png"), png)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
