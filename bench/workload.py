"""The benchmark workload, read from the job-title-similarity data (`--data`).

Per language folder (en, de, es, zh), tab-separated, no header:
`queries.tsv` (query_id, title), `corpus_documents.tsv` (document_id, title) and
`annotations.tsv` (query_id, 0, document_id, 1; relevant pairs only).
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

LANGUAGES = ("en", "de", "es", "zh")
SEED = 20261125


class DataError(Exception):
    """The `--data` folder is missing or not in the job-title-similarity layout."""


@dataclass
class RankingTask:
    """One language's ranking data: queries, corpus and the relevant documents per query."""

    language: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]] = field(default_factory=dict)

    def titles(self) -> list[str]:
        """Its distinct titles, stripped: the queries', then the corpus's, in file order."""
        return list(dict.fromkeys(t.strip() for t in (*self.queries.values(), *self.corpus.values())))


def _rows(path: Path, width: int) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"{path}: missing; --data must be the job-title-similarity folder (en/, de/, es/, zh/).")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    bad = [i + 1 for i, row in enumerate(rows) if len(row) < width]
    if bad:
        raise DataError(f"{path}: line {bad[0]} has fewer than {width} tab-separated fields.")
    return rows


def load_task(data: Path, language: str) -> RankingTask:
    """Read one language folder of the job-title-similarity data."""
    folder = Path(data) / language
    queries = {row[0]: row[1] for row in _rows(folder / "queries.tsv", 2)}
    corpus = {row[0]: row[1] for row in _rows(folder / "corpus_documents.tsv", 2)}
    task = RankingTask(language, queries, corpus)
    for row in _rows(folder / "annotations.tsv", 3):
        task.relevant.setdefault(row[0], set()).add(row[2])
    return task


def load_tasks(data: Path, languages: tuple[str, ...] = LANGUAGES) -> list[RankingTask]:
    """Read every language folder; a clear `DataError` if `data` is not the expected folder."""
    if not Path(data).is_dir():
        raise DataError(f"--data {data}: not a folder; give the job-title-similarity data folder.")
    return [load_task(Path(data), language) for language in languages]


def unique_titles(tasks: list[RankingTask], seed: int = SEED) -> list[str]:
    """Every distinct title (queries and corpus, all languages), shuffled with a fixed seed."""
    titles = sorted({t for task in tasks for t in task.titles()} - {""})
    random.Random(seed).shuffle(titles)
    return titles


def full_length_texts(titles: list[str]) -> list[str]:
    """The export probes' full-length texts and ten runs of 150 of `titles` (from the 3,000th on):
    every one is cut at any model's window, where int8 error is largest."""
    from jobbert_onnx.export.probes import FULL_LENGTH

    return [*FULL_LENGTH, *(" ".join(titles[i:i + 150]) for i in range(3000, 4500, 150))]


def skill_lists(titles: list[str], count: int, min_chars: int = 600, seed: int = SEED) -> list[str]:
    """`count` comma-separated lists of titles, each long enough to pass the 64-token limit.

    They stand in for the `positive` head's skill lists: the data holds no skills, and what the
    benchmark needs is inputs that fill the whole 64-token window, as real skill lists do.
    """
    rng = random.Random(seed)
    lists = []
    for _ in range(count):
        items: list[str] = []
        while sum(len(i) + 2 for i in items) < min_chars:
            items.append(rng.choice(titles))
        lists.append(", ".join(items))
    return lists
