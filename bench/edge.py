"""Edge artifacts: what `export --keep-vocabulary` saves and what it costs, on real weights.

For each real model (all-MiniLM-L6-v2, all-mpnet-base-v2), the full artifact and one trimmed to
the titles of the corpus languages (default: English) side by side: size, kept tokens, peak RSS
of a process that loads the artifact and embeds 32 titles, p50 of one title and titles/s at
batch 32 (the two artifacts taking turns, on 256 titles of the corpus languages and on 256 of
every language), and per language of the data the min and mean cosine of the trimmed artifact's
embeddings against the full one's, and MAP. Languages in the corpus must come out identical; the
others show what trimming costs a text the corpus did not cover.

    python -m bench.edge --data ../shared/data/job-title-similarity
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import real_models
from bench.artifacts import HERE, folder_mb, graph_mb, prepare_artifacts
from bench.machine import machine_info
from bench.measure import cosine_rows, p50_ms, rate, write_results
from bench.quality import evaluate_task
from bench.workload import DataError, load_tasks
from jobbert_onnx.runtime import Embedder

MODELS = {"minilm": ("all-MiniLM-L6-v2", real_models.minilm_path),
          "mpnet": ("all-mpnet-base-v2", real_models.mpnet_path)}
SPEED_ROUNDS = 3
RSS_SCRIPT = """
import sys
from bench.worker import peak_rss_mb
from jobbert_onnx.runtime import Embedder
embedder = Embedder(sys.argv[1])
embedder.encode(sys.argv[2:])
print(peak_rss_mb())
"""


def peak_rss_mb(artifact: Path, titles: list[str]) -> float:
    """Peak RSS (MB) of a fresh process that loads `artifact` and embeds `titles`."""
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(artifact), *titles], capture_output=True,
                         text=True, check=True, timeout=600, cwd=HERE.parent)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def measure_model(short: str, data: Path, precision: str, corpus_languages: tuple[str, ...], cache: Path,
                  work: Path) -> dict:
    """One model's full and trimmed artifacts, compared."""
    from jobbert_onnx.export import ExportConfig, export_model

    name, path = MODELS[short]
    tasks = load_tasks(data)
    corpus = work / f"{short}-corpus.txt"
    corpus.write_text("".join(f"{t}\n" for task in tasks if task.language in corpus_languages
                              for t in task.titles()), encoding="utf-8")
    full = prepare_artifacts(path(), cache, (precision,), name=short)[precision]
    start = time.perf_counter()
    trimmed = export_model(ExportConfig(model=str(path()), output=work / f"{short}-{precision}-trimmed",
                                        precision=precision, keep_vocabulary=corpus, overwrite=True,
                                        show_progress=False))
    export_s = time.perf_counter() - start
    record = json.loads((trimmed / "manifest.json").read_text())["encoder"]["transform"]["vocabulary"]
    embedders = {"full": Embedder(full), "trimmed": Embedder(trimmed)}
    languages = []
    for task in tasks:
        titles = task.titles()
        index = {t: i for i, t in enumerate(titles)}
        vectors = {k: e.encode(titles) for k, e in embedders.items()}
        cosine = cosine_rows(vectors["full"], vectors["trimmed"])
        maps = {k: evaluate_task(task, v, index)["map"] for k, v in vectors.items()}
        languages.append({"language": task.language, "in_corpus": task.language in corpus_languages,
                          "titles": len(titles), "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
                          "identical_share": float(np.mean(cosine > 0.999999)),
                          "map_full": maps["full"], "map_trimmed": maps["trimmed"]})
        print(json.dumps({"model": short, **languages[-1]}), flush=True)
    sample = tasks[0].titles()[:32]
    sizes = {k: {"artifact_mb": folder_mb(a), "encoder_mb": graph_mb(a, "encoder.onnx"),
                 "tokenizer_mb": round((a / "tokenizer.json").stat().st_size / 1e6, 1),
                 "peak_rss_mb": peak_rss_mb(a, sample)} for k, a in (("full", full), ("trimmed", trimmed))}
    # Out-of-corpus texts split into more pieces in the trimmed artifact, so they are timed apart.
    title_sets = {"corpus": [t for task in tasks if task.language in corpus_languages for t in task.titles()][:256],
                  "all": [t for task in tasks for t in task.titles()[:256 // len(tasks)]]}
    speed = _speed(embedders, title_sets, SPEED_ROUNDS)
    sizes = {k: v | speed[k] for k, v in sizes.items()}
    return {"model": name, "precision": precision, "corpus_languages": list(corpus_languages),
            "corpus_texts": record["corpus_texts"], "kept_tokens": record["kept_tokens"],
            "original_tokens": record["original_tokens"], "trimmed_export_s": round(export_s, 1),
            "sizes": sizes, "languages": languages}


def _speed(embedders: dict[str, Embedder], title_sets: dict[str, list[str]], rounds: int) -> dict[str, dict]:
    """p50 of one title and titles/s at batch 32 on each set of titles, the artifacts taking turns
    for `rounds` rounds in this process; medians."""
    p50s = {(k, s): [] for k in embedders for s in title_sets}
    rates = {(k, s): [] for k in embedders for s in title_sets}
    for _ in range(rounds):
        for name, titles in title_sets.items():
            for key, embedder in embedders.items():
                def encode(texts, batch, embedder=embedder):
                    return embedder.encode(texts, batch_size=batch)
                p50s[key, name].append(p50_ms(encode, titles, count=len(titles)))
                rates[key, name].append(rate(encode, titles, 32, repeats=1))
    return {k: {f"{measure}_{name}": float(np.median(values[k, name])) for name in title_sets
                for measure, values in (("p50_ms", p50s), ("titles_per_s_b32", rates))} for k in embedders}


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Edge: vocabulary trimming (`export --keep-vocabulary`)", "",
             f"Measured {result['date']} on {m['cpu']}, {m['cores']} cores; `python -m bench.edge --data DATA "
             f"--precision {result['precision']}`. Each model's full artifact against one trimmed to the titles "
             f"of {', '.join(result['corpus_languages'])} in the job-title-similarity data. Cosine: trimmed "
             "against full, per title; MAP: the data's ranking task, per language.", ""]
    for model in result["models"]:
        full, trimmed = model["sizes"]["full"], model["sizes"]["trimmed"]
        lines += [f"## {model['model']} ({model['precision']})", "",
                  f"Kept {model['kept_tokens']:,} of {model['original_tokens']:,} tokens for {model['corpus_texts']:,} "
                  f"corpus titles (trimmed export: {model['trimmed_export_s']:.0f} s).", "",
                  "| artifact | artifact MB | encoder MB | tokenizer.json MB | peak RSS MB (load + 32 titles) "
                  "| p50 ms, 1 title (corpus languages / all) | titles/s at 32 (corpus languages / all) |",
                  "|---|---|---|---|---|---|---|",
                  *(f"| {k} | {v['artifact_mb']} | {v['encoder_mb']} | {v['tokenizer_mb']} | {v['peak_rss_mb']} | "
                    f"{v['p50_ms_corpus']:.1f} / {v['p50_ms_all']:.1f} | "
                    f"{v['titles_per_s_b32_corpus']:.1f} / {v['titles_per_s_b32_all']:.1f} |"
                    for k, v in (("full", full), ("trimmed", trimmed))),
                  "",
                  "| language | in corpus | titles | min cosine | mean cosine | identical | MAP full | MAP trimmed |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['language']} | {'yes' if r['in_corpus'] else 'no'} | {r['titles']:,} | {r['min_cosine']:.5f} | "
                  f"{r['mean_cosine']:.5f} | {r['identical_share']:.1%} | {r['map_full']:.4f} | {r['map_trimmed']:.4f} |"
                  for r in model["languages"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="the job-title-similarity folder")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--precision", choices=["fp32", "int8"], default="int8")
    parser.add_argument("--corpus-languages", nargs="+", default=["en"])
    parser.add_argument("--cache", type=Path, default=HERE / "cache")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    try:
        load_tasks(args.data)
    except DataError as exc:
        print(f"bench.edge: error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="jobbert-edge-") as work:
        models = [measure_model(m, args.data, args.precision, tuple(args.corpus_languages), args.cache, Path(work))
                  for m in args.models]
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), "precision": args.precision,
              "corpus_languages": args.corpus_languages, "models": models}
    markdown = to_markdown(result)
    write_results(args.results, "edge", result, markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
