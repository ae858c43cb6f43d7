"""bench/quality.py: the metric functions by hand, and a tiny end-to-end run on the real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.quality import (
    REFERENCE, average_precision, main, mrr_at_k, recall_at_k, run_quality, to_markdown, write_results,
)

RANKED = [f"d{i}" for i in range(1, 16)]  # d1 is rank 1 ... d15 is rank 15


@pytest.mark.parametrize(
    ("relevant", "ap", "rr", "recall"),
    [
        ({"d1", "d3"}, (1 / 1 + 2 / 3) / 2, 1.0, 1.0),
        ({"d2", "d13"}, (1 / 2 + 2 / 13) / 2, 1 / 2, 1 / 2),  # one relevant doc beyond the top 10
        ({"d12"}, 1 / 12, 0.0, 0.0),  # no relevant doc in the top 10
        ({"d4", "absent"}, (1 / 4) / 2, 1 / 4, 1 / 2),  # one relevant doc never retrieved counts as 0
        ({"d10", "d11"}, (1 / 10 + 2 / 11) / 2, 1 / 10, 1 / 2),  # rank 10 is in, rank 11 is out
    ],
)
def test_metrics_by_hand(relevant: set[str], ap: float, rr: float, recall: float) -> None:
    assert average_precision(RANKED, relevant) == pytest.approx(ap)
    assert mrr_at_k(RANKED, relevant, 10) == pytest.approx(rr)
    assert recall_at_k(RANKED, relevant, 10) == pytest.approx(recall)


def test_metrics_small_k_and_errors() -> None:
    assert mrr_at_k(RANKED, {"d3"}, k=2) == 0.0
    assert recall_at_k(RANKED, {"d1", "d2", "d9"}, k=2) == pytest.approx(2 / 3)
    for metric in (average_precision, mrr_at_k, recall_at_k):
        with pytest.raises(ValueError):
            metric(RANKED, set())
    with pytest.raises(ValueError):
        recall_at_k(RANKED, {"d1"}, k=0)


def _write(path: Path, rows: list[tuple[str, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """Two languages in the job-title-similarity layout, a few titles each."""
    data = tmp_path / "data"
    en = {
        "queries": [("q1", "Software Engineer"), ("q2", "Registered Nurse"), ("q3", "Chef"), ("q4", "Pilot")],
        "corpus": [("c1", "Software Developer"), ("c2", "Backend Programmer"), ("c3", "Nurse Practitioner"),
                   ("c4", "Head Cook"), ("c5", "Truck Driver"), ("c6", "Accountant"), ("c7", "Chef"),
                   ("c8", " Data Scientist ")],
        # q4 has no relevant document, so it is not scored; q3's own title is in the corpus (c7).
        "qrels": [("q1", "0", "c1", "1"), ("q1", "0", "c2", "1"), ("q2", "0", "c3", "1"), ("q3", "0", "c4", "1")],
    }
    de = {
        "queries": [("q1", "Softwareentwickler"), ("q2", "Krankenschwester")],
        "corpus": [("c1", "Programmierer"), ("c2", "Pflegekraft"), ("c3", "Koch"), ("c4", "Buchhalter"),
                   ("c5", "Lkw-Fahrer")],
        "qrels": [("q1", "0", "c1", "1"), ("q2", "0", "c2", "1"), ("q2", "0", "c4", "1")],
    }
    for lang, files in (("en", en), ("de", de)):
        _write(data / lang / "queries.tsv", files["queries"])
        _write(data / lang / "corpus_documents.tsv", files["corpus"])
        _write(data / lang / "annotations.tsv", files["qrels"])
    return data


@pytest.mark.full  # exports and runs sentence-transformers
def test_run_quality_fp32_matches_pytorch(tiny_data: Path, tmp_path: Path) -> None:
    result = run_quality(tiny_data, precisions=["fp32"], cache=tmp_path / "cache", languages=("en", "de"),
                         log=lambda _: None)

    assert result["workload"]["languages"]["en"]["queries_with_relevant"] == 3
    assert result["workload"]["languages"]["en"]["query_titles_in_corpus"] == 1
    assert list(result["systems"]) == [REFERENCE, "onnx-fp32"]
    reference, onnx = result["systems"][REFERENCE], result["systems"]["onnx-fp32"]
    for lang in ("en", "de"):
        assert reference["metrics"][lang]["queries"] == (3 if lang == "en" else 2)
        for name, value in reference["metrics"][lang].items():
            assert onnx["metrics"][lang][name] == pytest.approx(value, abs=1e-6)
            assert 0.0 <= value <= (1.0 if name != "queries" else 3)
    assert onnx["fidelity"]["min_cosine"] >= 0.99999
    assert onnx["max_map_delta"] <= 1e-6
    assert (tmp_path / "cache" / "minilm-fp32" / "manifest.json").is_file()

    json_path, md_path = write_results(result, tmp_path / "results")
    assert json.loads(json_path.read_text(encoding="utf-8"))["systems"]["onnx-fp32"]["precision"] == "fp32"
    table = md_path.read_text(encoding="utf-8")
    assert table == to_markdown(result)
    assert "| PyTorch fp32 |" in table and "| ONNX fp32 |" in table
    assert not [p for p in (tmp_path / "results").iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_data_path_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
