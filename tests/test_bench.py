"""bench/: the workload reader, the token accounting behind the roofline, the target checks and
the README update, on small made-up inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report, speed
from bench.workload import DataError, load_tasks, skill_lists, unique_titles


def _language(folder: Path, queries: dict[str, str], corpus: dict[str, str], pairs: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True)
    (folder / "queries.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in queries.items()), encoding="utf-8")
    (folder / "corpus_documents.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in corpus.items()), encoding="utf-8")
    (folder / "annotations.tsv").write_text("".join(f"{q}\t0\t{d}\t1\n" for q, d in pairs), encoding="utf-8")


def test_workload_reads_all_languages_and_dedups(tmp_path: Path) -> None:
    for language in ("en", "de", "es", "zh"):
        _language(tmp_path / language, {"q1": "Nurse"}, {"c1": " Nurse ", "c2": f"Chef {language}"}, [("q1", "c1")])
    tasks = load_tasks(tmp_path)
    assert [t.language for t in tasks] == ["en", "de", "es", "zh"] and tasks[0].relevant == {"q1": {"c1"}}
    titles = unique_titles(tasks)
    assert sorted(titles) == sorted({"Nurse", "Chef en", "Chef de", "Chef es", "Chef zh"})
    assert unique_titles(tasks) == titles  # the shuffle is seeded
    lists = skill_lists(titles, 3)
    assert len(lists) == 3 and all(len(s) >= 600 for s in lists)


def test_workload_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        load_tasks(tmp_path / "missing")
    _language(tmp_path / "en", {"q1": "Nurse"}, {"c1": "Nurse"}, [])
    (tmp_path / "en" / "annotations.tsv").write_text("q1\n", encoding="utf-8")
    with pytest.raises(DataError, match="annotations.tsv: line 1"):
        load_tasks(tmp_path, ("en",))
    (tmp_path / "en" / "annotations.tsv").write_text("q1\t0\tc1\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match="de.queries.tsv: missing"):
        load_tasks(tmp_path, ("en", "de"))


def test_padded_tokens_follow_token_sorted_batches() -> None:
    lengths = [2, 5, 3, 4]  # sorted by tokens, as the runtime batches them: 5 4 | 3 2
    tokens, sequence = speed.padded_tokens(lengths, 2)
    assert tokens == 2 * 5 + 2 * 3  # (5, 4) padded to 5, (3, 2) padded to 3
    assert sequence == pytest.approx((2 * 25 + 2 * 9) / 16)


def _result(seed: float, int8_b8: float) -> dict:
    rates = {"8": seed, "32": seed * 1.2, "128": seed}
    return {
        "throughput": {"pytorch": rates, "onnx-fp32": {"8": seed * 2}, "onnx-int8": {"1": 1.0, "8": int8_b8}},
        "latency_ms": {"pytorch": {"p50_ms": 40.0}, "onnx-int8": {"p50_ms": 5.0}},
        "fidelity_vs_pytorch": {"onnx-fp32": {"titles": {"min_cosine": 0.99998}}},
        "artifact_mb": {"onnx-int8": 287.0}, "peak_rss_mb": {"onnx-int8": 500.0, "pytorch": 2000.0},
        "cold_start_s": {"onnx-int8": 0.8}, "int8_batch_invariance_min_cosine": 0.99999,
    }


def test_targets_are_ratios_of_the_same_run() -> None:
    met = {t["target"]: t for t in speed.targets(_result(seed=10.0, int8_b8=35.0))}
    assert met["int8 throughput at batch 8 vs seed recipe"]["measured"] == pytest.approx(3.5)
    assert met["best int8 throughput vs PyTorch's best batch"]["measured"] == pytest.approx(35 / 12)
    assert met["best int8 throughput vs PyTorch's best batch"]["met"] is False
    assert met["int8 p50 latency vs PyTorch's"]["met"] is True  # 5/40 is exactly the 1/8 allowed
    assert met["int8 peak RSS vs PyTorch's"]["measured"] == pytest.approx(0.25)
    assert met["fp32 min cosine vs PyTorch (titles)"]["met"] is False


def test_readme_section_is_replaced(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold table\n{report.END}\noutro\n", encoding="utf-8")
    assert report.update_readme(readme, "new table\n")
    assert readme.read_text(encoding="utf-8") == f"intro\n{report.START}\nnew table\n{report.END}\noutro\n"
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n", encoding="utf-8")
    assert not report.update_readme(plain, "x") and plain.read_text(encoding="utf-8") == "no markers\n"
