"""Embedding a dataset: the local engine and Ray against `Embedder.encode` on the unique texts.

    python -m bench.datasets --data DATA [--rows 1000000] [--memory-rows 100000,1000000] [--dedup-rows 20000]

Input: `--rows` job titles drawn from the data with Zipf repetition (s = 1.1 over the titles in a
fixed shuffled order), with ids, as Parquet (cached in bench/cache/datasets/). On the JobBERT-sized
int8 artifact that `python -m bench.speed` builds (`--artifact` to use another), it measures:

- rows/s of the local engine, of Ray with 1 and with 2 actors of 1 thread, and the ceiling:
  `Embedder.encode` on the input's distinct texts alone (no reading, no writing, no repeats),
  as rows of the input per second;
- peak RSS (VmHWM) of the local engine at each of `--memory-rows`, each in a fresh process;
- what deduplication saves: the local engine on the first `--dedup-rows` rows with and without it;
- on paper, what 100M postings would take on CPUs and on GPUs.

Each engine runs in its own process, one after another, alone on the machine (hold the shared
lock). Ray's time includes starting Ray and its actors, as a user's job would. Results go to
bench/results/datasets.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.machine import machine_info
from bench.workload import load_tasks, unique_titles

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "datasets"
RESULTS = HERE / "results"
ZIPF_S = 1.1
# bench.speed's GPU figures (docs/benchmarks.md, "GPU": NVIDIA H200, fp16, titles/s at batch 256) and its CPU
# figures for 64-token skill lists against titles (int8, batch 8), for the paper estimate.
GPU_TITLES_PER_S = 39_011
SKILL_LIST_SLOWDOWN = 393.5 / 67.9

WORKER = r"""
import json, re, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
start = time.perf_counter()
if args["kind"] == "ceiling":
    import pyarrow.parquet as pq
    from jobbert_onnx import Embedder
    texts = sorted(set(pq.read_table(args["input"], columns=["text"])["text"].to_pylist()))
    embedder = Embedder(args["artifact"])
    start = time.perf_counter()
    embedder.encode(texts, batch_size=32)
    result = {"unique_texts": len(texts)}
else:
    from jobbert_onnx.datasets import embed_dataset
    result = embed_dataset(args["artifact"], args["input"], args["output"], id_column="id", show_progress=False,
                           **args["options"])
result["seconds"] = time.perf_counter() - start
result["peak_rss_mb"] = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
print(json.dumps(result))
"""


def _log(message: str) -> None:
    print(f"[bench.datasets] {message}", file=sys.stderr, flush=True)


def zipf_input(titles: list[str], rows: int, seed: int = 20261126) -> Path:
    """`rows` titles drawn with Zipf repetition, ids 0..rows-1, as Parquet (cached)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = CACHE / f"zipf-{rows}-{len(titles)}.parquet"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    weights = 1.0 / np.arange(1, len(titles) + 1) ** ZIPF_S
    picks = np.random.default_rng(seed).choice(len(titles), size=rows, p=weights / weights.sum())
    table = pa.table({"id": np.arange(rows, dtype=np.int64), "text": [titles[i] for i in picks]})
    pq.write_table(table, path.with_suffix(".partial"), row_group_size=100_000)
    path.with_suffix(".partial").rename(path)
    return path


def prefix(source: Path, rows: int) -> Path:
    """The first `rows` rows of `source`, as Parquet (cached)."""
    import pyarrow.parquet as pq

    path = source.with_name(f"{source.stem}-first{rows}.parquet")
    if not path.exists():
        pq.write_table(pq.read_table(source).slice(0, rows), path, row_group_size=100_000)
    return path


PARTIAL_NAME = "datasets.partial.json"  # every run as it ends, so that an interrupted benchmark keeps them


def measure(kind: str, artifact: Path, source: Path, options: dict | None = None) -> dict:
    """One run in a fresh process; its output folder is removed afterwards."""
    output = CACHE / "out"
    shutil.rmtree(output, ignore_errors=True)
    args = {"kind": kind, "artifact": str(artifact), "input": str(source), "output": str(output),
            "options": options or {}}
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], capture_output=True, text=True,
                          cwd=HERE.parent)
    shutil.rmtree(output, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {options}: failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / PARTIAL_NAME).open("a") as f:
        f.write(json.dumps({"kind": kind, "input": source.name, "options": options or {}, **result}, default=str) + "\n")
    return result


def markdown(report: dict) -> str:
    m, r = report["machine"], report["results"]
    rows = report["rows"]
    lines = [
        "# Embedding a dataset (`python -m bench.datasets`)",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; onnxruntime {m['versions'].get('onnxruntime')}, "
        f"ray {report['ray']}, pyarrow {report['pyarrow']}; {report['date']}. {report['label']}",
        "",
        f"Input: {rows:,} job titles drawn with Zipf repetition (s = {ZIPF_S}) from {report['titles']:,} distinct "
        f"titles of the data ({r['ceiling']['unique_texts']:,} distinct in the input), with ids, as Parquet. "
        f"Artifact: `{report['artifact']}` (JobBERT-v3 shape, int8, random weights), head anchor, 1024 dimensions.",
        "",
        "| run | seconds | rows/s | vs ceiling | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("ceiling", "ceiling: `Embedder.encode` on the distinct texts (2 threads)"),
                        ("local", "local engine (2 threads)"), ("ray1", "Ray, 1 actor x 1 thread"),
                        ("ray2", "Ray, 2 actors x 1 thread")):
        run = r[name]
        lines.append(f"| {label} | {run['seconds']:.1f} | {rows / run['seconds']:,.0f} | "
                     f"{r['ceiling']['seconds'] / run['seconds']:.0%} | {run['peak_rss_mb']:.0f} |")
    lines += ["", "| local engine, peak RSS | " + " | ".join(f"{n:,} rows" for n in r["memory"]) + " |",
              "|---|" + "---|" * len(r["memory"]),
              "| MB | " + " | ".join(f"{v['peak_rss_mb']:.0f}" for v in r["memory"].values()) + " |", ""]
    d = r["dedup"]
    lines += [f"Deduplication, local engine on the first {d['rows']:,} rows: {d['with']['seconds']:.1f} s with it "
              f"(per batch and the cache across batches; {d['with']['texts_encoded']:,} texts encoded), "
              f"{d['without']['seconds']:.1f} s without ({d['rows']:,} encoded): **{d['speedup']:.1f}x**.", ""]
    lines += ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['name']} | {t['measured']} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
    p = report["paper"]
    lines += ["", "On paper, 100M postings (from the rates above; GPU from the H200 figures in docs/benchmarks.md):", "",
              "| | per core or GPU | 100M distinct titles | 100M at this input's repetition | 100M distinct 64-token texts |",
              "|---|---|---|---|---|"]
    for row in p:
        lines.append(f"| {row['what']} | {row['rate']} | {row['distinct']} | {row['zipf']} | {row['long']} |")
    return "\n".join(lines) + "\n"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.0f} min"


def main(argv: list[str] | None = None) -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the job-title-similarity folder")
    parser.add_argument("--artifact", type=Path, default=HERE / "cache" / "reference-int8",
                        help="artifact to run (default: the JobBERT-sized int8 one bench.speed builds)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-rows", default="100000,1000000", help="input sizes for peak RSS, comma-separated")
    parser.add_argument("--dedup-rows", type=int, default=20_000)
    parser.add_argument("--label", default="", help="a note for the report (e.g. 'reduced run')")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="folder for datasets.{json,md} (default bench/results; a trial run can write elsewhere)")
    args = parser.parse_args(argv)
    RESULTS = args.results
    if not (args.artifact / "manifest.json").is_file():
        sys.exit(f"{args.artifact}: no artifact; run `python -m bench.speed --data DATA` first, or pass --artifact.")

    import pyarrow
    import ray

    titles = unique_titles(load_tasks(args.data))
    memory_rows = [int(n) for n in args.memory_rows.split(",")]
    total = max([args.rows, *memory_rows])
    source = zipf_input(titles, total)

    def input_of(n: int) -> Path:
        return source if n == total else prefix(source, n)

    main_input = input_of(args.rows)
    results: dict = {}
    _log(f"ceiling on {main_input.name}")
    results["ceiling"] = measure("ceiling", args.artifact, main_input)
    _log("local engine")
    results["local"] = measure("engine", args.artifact, main_input)
    for workers in (1, 2):
        _log(f"Ray, {workers} actor(s)")
        results[f"ray{workers}"] = measure("engine", args.artifact, main_input,
                                           {"engine": "ray", "workers": workers, "threads": 1})
    results["memory"] = {}
    for n in memory_rows:
        _log(f"peak RSS at {n} rows")
        results["memory"][n] = results["local"] if n == args.rows else measure("engine", args.artifact, input_of(n))
    dedup_input = prefix(source, args.dedup_rows)
    _log("dedup on/off")
    with_dedup = measure("engine", args.artifact, dedup_input)
    without = measure("engine", args.artifact, dedup_input, {"dedup": False})
    results["dedup"] = {"rows": args.dedup_rows, "with": with_dedup, "without": without,
                        "speedup": without["seconds"] / with_dedup["seconds"]}

    local_rate = args.rows / results["local"]["seconds"]
    ceiling_rate = args.rows / results["ceiling"]["seconds"]
    ray_rate = args.rows / results["ray2"]["seconds"]
    small, big = results["memory"][min(memory_rows)], results["memory"][max(memory_rows)]
    targets = [
        {"name": "local engine rows/s vs the ceiling", "measured": f"{local_rate / ceiling_rate:.0%}",
         "goal": ">= 90%", "met": local_rate >= 0.9 * ceiling_rate},
        {"name": "Ray (2 actors x 1 thread) rows/s vs local", "measured": f"{ray_rate / local_rate:.0%}",
         "goal": ">= 80%", "met": ray_rate >= 0.8 * local_rate},
        {"name": f"peak RSS at {max(memory_rows):,} vs {min(memory_rows):,} rows",
         "measured": f"{big['peak_rss_mb']:.0f} vs {small['peak_rss_mb']:.0f} MB", "goal": "no growth (+10% at most)",
         "met": big["peak_rss_mb"] <= 1.1 * small["peak_rss_mb"]},
    ]
    cores = machine_info()["cores"]
    unique_per_core = results["ceiling"]["unique_texts"] / results["ceiling"]["seconds"] / cores
    zipf_rows_per_core = local_rate / cores
    n = 100e6
    paper = [
        {"what": "CPU core (this machine, int8)", "rate": f"{unique_per_core:,.0f} titles/s",
         "distinct": f"{_hours(n / unique_per_core)} on 1 core; {_hours(n / unique_per_core / 320)} on 10 x 32 cores",
         "zipf": f"{_hours(n / zipf_rows_per_core)} on 1 core (if the repetition held)",
         "long": f"{_hours(n / unique_per_core * SKILL_LIST_SLOWDOWN)} on 1 core; "
                 f"{_hours(n / unique_per_core * SKILL_LIST_SLOWDOWN / 320)} on 10 x 32 cores"},
        {"what": "GPU (H200, fp16)", "rate": f"{GPU_TITLES_PER_S:,} titles/s",
         "distinct": f"{_hours(n / GPU_TITLES_PER_S)} on 1 GPU", "zipf": "bound by reading, not the GPU",
         "long": f"{_hours(n / GPU_TITLES_PER_S * SKILL_LIST_SLOWDOWN)} on 1 GPU (CPU ratio; not measured on GPU)"},
    ]
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label": args.label, "machine": machine_info(),
              "ray": ray.__version__, "pyarrow": pyarrow.__version__, "rows": args.rows, "titles": len(titles),
              "artifact": str(args.artifact.relative_to(HERE.parent)) if args.artifact.is_relative_to(HERE.parent)
              else str(args.artifact), "results": results, "targets": targets, "paper": paper}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "datasets.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / "datasets.md").write_text(markdown(report))
    (RESULTS / PARTIAL_NAME).unlink(missing_ok=True)
    print(markdown(report))


if __name__ == "__main__":
    main()
