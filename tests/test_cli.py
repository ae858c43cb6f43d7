"""The `jobbert-onnx` command end to end, in a subprocess as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobbert_onnx.runtime import Embedder

TITLES = ["Software Engineer", "高级软件开发人员", "Produktmanager", "Científica de datos"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobbert_onnx.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobbert-onnx: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_export_info_verify_embed(jobbert_asym_model, tmp_path):
    out = tmp_path / "artifact"
    result = cli("export", jobbert_asym_model, out, "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    assert "head       anchor (default)" in result.stdout

    info = cli("info", out)
    assert info.returncode == 0 and "positive" in info.stdout and "min cosine" in info.stdout
    verify = cli("verify", out)
    assert verify.returncode == 0 and verify.stdout.startswith("OK")

    printed = cli("embed", out, *TITLES, "--head", "positive")
    assert printed.returncode == 0, printed.stderr
    rows = [json.loads(line) for line in printed.stdout.splitlines()]
    assert [r["text"] for r in rows] == TITLES
    expected = Embedder(out).encode(TITLES, head="positive")
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)

    again = cli("export", jobbert_asym_model, out)
    assert_one_line_error(again, "not empty", "--overwrite")


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv"])
def test_embed_input_formats_and_outputs(exported, tmp_path, kind):
    artifact = exported("jobbert_asym_model", "fp32")
    source = tmp_path / f"titles.{kind}"
    if kind == "txt":
        source.write_text("\n".join(TITLES) + "\n", encoding="utf-8")
        extra: list[str] = []
    elif kind == "jsonl":
        source.write_text("".join(json.dumps({"title": t}, ensure_ascii=False) + "\n" for t in TITLES), encoding="utf-8")
        extra = ["--column", "title"]
    else:
        source.write_text("id,title\n" + "".join(f"{i},{t}\n" for i, t in enumerate(TITLES)), encoding="utf-8")
        extra = ["--column", "title"]
    expected = Embedder(artifact).encode(TITLES, normalize=True)

    npy = tmp_path / "out.npy"
    result = cli("embed", artifact, "--input", source, *extra, "--output", npy, "--normalize")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(npy), expected, atol=1e-6)

    jsonl = tmp_path / "out.jsonl"
    assert cli("embed", artifact, "--input", source, *extra, "--output", jsonl, "--normalize").returncode == 0
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == TITLES
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.jsonl", "out.npy", source.name])


def test_similarity_command(exported):
    result = cli("similarity", exported("jobbert_asym_model", "fp32"), *TITLES)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(TITLES)
    assert lines[1].split()[1] == "1.000" and lines[1].endswith("Software Engineer")


def test_errors_are_one_line(exported, tmp_path):
    artifact = exported("jobbert_asym_model", "fp32")
    assert_one_line_error(cli("embed", artifact, "x", "--head", "nope"), "nope", "anchor", "positive")
    assert_one_line_error(cli("embed", tmp_path / "missing", "x"), "missing")
    assert_one_line_error(cli("embed", artifact, "x", "--output", tmp_path / "out.txt"), "out.txt")
    assert_one_line_error(cli("embed", artifact, "--input", tmp_path / "none.txt"), "none.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    assert_one_line_error(cli("embed", artifact, "--input", bad), "bad.jsonl:2")
    assert_one_line_error(cli("export", tmp_path / "no-model", tmp_path / "out"), "no-model")
    assert not (tmp_path / "out").exists()


def test_failed_output_write_keeps_the_old_file(exported, tmp_path):
    artifact = exported("jobbert_asym_model", "fp32")
    out = tmp_path / "out.npy"
    out.write_bytes(b"old")
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n{"nope": 1}\n')
    assert_one_line_error(cli("embed", artifact, "--input", source, "--output", out), "in.jsonl:2")
    assert out.read_bytes() == b"old"


def test_verify_names_a_damaged_file(exported, tmp_path):
    import shutil

    artifact = shutil.copytree(exported("jobbert_asym_model", "fp32"), tmp_path / "copy")
    with open(artifact / "heads" / "positive.onnx", "ab") as handle:
        handle.write(b"\0")
    assert_one_line_error(cli("verify", artifact), "heads/positive.onnx")
    assert_one_line_error(cli("embed", artifact, "x"), "heads/positive.onnx")


def test_debug_shows_traceback(exported):
    result = cli("--debug", "embed", exported("jobbert_asym_model", "fp32"), "x", "--head", "nope")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_int8_export_with_calibration_file_and_opset_18(jobbert_asym_model, tmp_path):
    # opset 18 takes ReduceMax's axes as an input: the int8 rewrite must follow.
    texts = tmp_path / "my-titles.txt"
    texts.write_text("Pflegefachkraft\nData Engineer\n", encoding="utf-8")
    out = tmp_path / "artifact"
    result = cli("export", jobbert_asym_model, out, "--precision", "int8", "--opset", "18", "--calibration", texts)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["opset"] == 18 and manifest["encoder"]["transform"]["calibration_texts"] == str(texts)
    assert manifest["validation"]["heads"]["anchor"]["min_cosine"] >= 0.99
    missing = cli("export", jobbert_asym_model, tmp_path / "other", "--precision", "int8",
                  "--calibration", tmp_path / "nope.txt")
    assert_one_line_error(missing, "nope.txt")
    assert not (tmp_path / "other").exists()


# -- embed-dataset (the toy artifact: no export needed) --------------------------------------
def test_embed_dataset_command(artifact, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    source = tmp_path / "postings.csv"
    source.write_text("id,title\n7,nurse\n8,python developer\n9,nurse\n")
    result = cli("embed-dataset", artifact, source, tmp_path / "out", "--text-column", "title", "--id-column", "id",
                 "--head", "positive", "--normalize", "--batch-rows", "2")
    assert result.returncode == 0, result.stderr
    assert "row/s" in result.stderr  # the tqdm bar, in rows
    table = pq.read_table(tmp_path / "out").sort_by("id")
    assert table["id"].to_pylist() == [7, 8, 9]
    got = np.asarray(table["embedding"].combine_chunks().flatten()).reshape(3, -1)
    want = Embedder(artifact).encode(["nurse", "python developer", "nurse"], head="positive", normalize=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert (summary["rows_written"], summary["head"], summary["normalize"]) == (3, "positive", True)
    again = cli("embed-dataset", artifact, source, tmp_path / "out", "--text-column", "title", "--id-column", "id",
                "--head", "positive", "--normalize", "--batch-rows", "2", "--no-progress")
    assert again.returncode == 0 and json.loads(again.stderr.split(": ", 1)[1]) == summary  # finished: nothing new


def test_embed_dataset_errors_are_one_line(artifact, tmp_path):
    pytest.importorskip("pyarrow")
    source = tmp_path / "in.csv"
    source.write_text("id,title\n1,nurse\n2,\n")
    missing = cli("embed-dataset", artifact, source, tmp_path / "a", "--id-column", "id", "--no-progress")
    assert_one_line_error(missing, f"bad row id=1, input row 0 in {source}: no column 'text'", "--on-bad-row skip")
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"id": 1, "text": "nurse"}) + "\n" + json.dumps({"id": 2, "text": "x" * 70_000}) + "\n")
    too_long = cli("embed-dataset", artifact, long, tmp_path / "b", "--id-column", "id", "--no-progress")
    assert_one_line_error(too_long, "bad row id=2, input row 1", "a text of 70,000 characters cannot be embedded")
    skipped = cli("embed-dataset", artifact, long, tmp_path / "c", "--id-column", "id", "--no-progress",
                  "--on-bad-row", "skip")
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads((tmp_path / "c" / "_summary.json").read_text())["rejected_rows"] == 1
    other_head = cli("embed-dataset", artifact, long, tmp_path / "c", "--id-column", "id", "--no-progress",
                     "--on-bad-row", "skip", "--head", "positive")
    assert_one_line_error(other_head, "head 'anchor', this run uses 'positive'")
    no_ids = cli("embed-dataset", artifact, long, tmp_path / "d", "--engine", "ray")
    assert_one_line_error(no_ids, "the Ray engine needs an id column (--id-column)")
    assert not (tmp_path / "d").exists()


def test_embed_dataset_without_pyarrow_names_the_extra(artifact, tmp_path):
    """A runtime-only install has no pyarrow: the command says which extra to install, in one line."""
    code = ("import sys; sys.modules['pyarrow'] = None; from jobbert_onnx.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "embed-dataset", str(artifact), str(tmp_path / "in.csv"),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "embed-dataset needs the [datasets] extra: pip install 'jobbert-onnx[datasets]'")
    help_text = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "embed-dataset" in help_text.stdout  # listed without pyarrow
