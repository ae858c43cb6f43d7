"""The embed command's files: reading texts, writing embeddings, and the artifact summary.

Runs on the toy artifact (tests/toy_artifact.py), in process, without torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from jobbert_onnx import embed_files
from jobbert_onnx.artifact_summary import summary_lines
from jobbert_onnx.cli import main
from jobbert_onnx.embed_files import InputError, OutputFileError, read_texts, write_embeddings
from jobbert_onnx.runtime import Embedder, Manifest


# Texts that str.splitlines() would split, quotes and separators a CSV or JSON writer must escape,
# a line break of each kind, surrounding spaces and the empty text.
TRICKY = [
    "line one\nline two",
    'say "hi", then \'bye\'',
    "tab\there",
    "a\u2028b",
    "p\u2029q",
    "c\x85d",
    "v\vw\fx",
    "fs\x1cgs\x1dus\x1e",
    "crlf\r\nend\rcr",
    "senior 高级软件开发人员 🙂",
    "  padded  ",
    "",
]


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """`jobbert-onnx ARGS` in process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobbert-onnx: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Records each Embedder.encode call's keyword arguments; the real encode still runs."""
    calls: list[dict] = []
    real = Embedder.encode

    def spy(self, texts, **kwargs):
        calls.append(dict(kwargs))
        kwargs.pop("prompt_name", None)  # the toy artifact has no prompts
        return real(self, texts, **kwargs)

    monkeypatch.setattr(Embedder, "encode", spy)
    return calls


# -- reading .txt --------------------------------------------------------------------------
def test_txt_rows_split_on_newline_only(tmp_path: Path) -> None:
    content = "a\vb\nc\x1cd\ne\x85f\ng\u2028h\ni\u2029j\r\nk\rl\n"
    path = tmp_path / "texts.txt"
    path.write_bytes(content.encode("utf-8"))
    texts = read_texts(path)
    assert texts == ["a\vb", "c\x1cd", "e\x85f", "g\u2028h", "i\u2029j", "k\rl"]
    assert len(texts) == content.count("\n")  # what `wc -l` counts


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a\n\nb\n", ["a", "", "b"]),  # a blank line is an empty text: rows stay aligned with lines
        ("a\nb", ["a", "b"]),  # a last line without a newline still counts
        ("a\nb\n\n", ["a", "b", ""]),  # a final blank line is a text too
        ("a\r\n\r\nb\r\n", ["a", "", "b"]),  # Windows line ends: one \r is stripped
        ("a\r\r\n", ["a\r"]),  # ... only one
        ("\n", [""]),
        ("", []),
    ],
)
def test_txt_blank_and_final_lines(tmp_path: Path, content: str, expected: list[str]) -> None:
    path = tmp_path / "texts.txt"
    path.write_bytes(content.encode("utf-8"))
    assert read_texts(path) == expected


def test_txt_drops_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_bytes("\ufeffnurse\ndata engineer\n".encode("utf-8"))
    assert read_texts(path) == ["nurse", "data engineer"]


def test_txt_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"ok\n" * 5000 + "Müller\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt:5001: .*UTF-8"):
        read_texts(path)


def test_txt_refuses_a_column(tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_text("a\n", encoding="utf-8")
    with pytest.raises(InputError, match="--column"):
        read_texts(path, "title")


# -- reading .csv --------------------------------------------------------------------------
def test_csv_quoted_fields_keep_line_breaks_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "texts.csv"
    path.write_bytes(b'id,text\n1,"line1\nline2"\n2,"say ""hi"", then go"\n3,"crlf\r\ninside"\r\n4,"a\xe2\x80\xa8b"\n')
    assert read_texts(path) == ["line1\nline2", 'say "hi", then go', "crlf\r\ninside", "a\u2028b"]


def test_csv_with_a_byte_order_mark_keeps_its_first_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,id\nnurse,1\njava developer,2\n".encode("utf-8"))
    assert read_texts(path) == ["nurse", "java developer"]


def test_csv_row_without_the_column_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text('id,text\n1,"two\nlines"\n2\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"short\.csv:4: .*'text'"):
        read_texts(path)


def test_csv_unknown_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "titles.csv"
    path.write_text("id,title\n1,nurse\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"titles\.csv: no column 'text'.*'id', 'title'.*--column"):
        read_texts(path)
    assert read_texts(path, "title") == ["nurse"]


def test_csv_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty\.csv: .*header"):
        read_texts(path)


# -- reading .jsonl ------------------------------------------------------------------------
def test_jsonl_with_raw_line_separators_in_strings(tmp_path: Path) -> None:
    path = tmp_path / "texts.jsonl"
    # ensure_ascii=False leaves U+2028, U+2029 and NEL raw, as our own --output does
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TRICKY), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert read_texts(path) == TRICKY


def test_jsonl_skips_blank_lines_and_reads_a_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "texts.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"title": "a"}\r\n\r\n  \n{"title": "b"}')
    assert read_texts(path, "title") == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"other": "x"}', "no 'text' field"),
        ('{"text": 3}', "a number, not a string"),
        ('{"text": null}', "null, not a string"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_jsonl_errors_name_the_line_and_the_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:3: ") as caught:
        read_texts(path)
    assert reason in str(caught.value)


@pytest.mark.parametrize("suffix", [".ndjson", ".json", ".JSONL"])
def test_json_lines_by_any_of_their_names(tmp_path: Path, suffix: str) -> None:
    """The names `embed-dataset` reads as JSON lines are JSON lines here too (one rule, `format_of`)."""
    path = tmp_path / f"texts{suffix}"
    path.write_text('{"title": "nurse"}\n{"title": "java developer"}\n', encoding="utf-8")
    assert read_texts(path, "title") == ["nurse", "java developer"]


@pytest.mark.parametrize("name", ["texts.parquet", "texts.csv.gz", "texts.txt.zst"])
def test_parquet_and_compressed_inputs_point_to_embed_dataset(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"PAR1")
    with pytest.raises(InputError, match=rf"{name}: embed reads plain text, JSON-lines and CSV files; "
                                         rf"embed-dataset reads Parquet"):
        read_texts(path)


def test_one_reader_rule_and_error_for_both_commands(tmp_path: Path) -> None:
    """`embed --input` and `embed-dataset` share the format by name, the JSON-line rule and the error
    type (jobbert_onnx.embed_files); a malformed line gives the same reason in both."""
    pytest.importorskip("pyarrow")
    from jobbert_onnx import datasets
    from jobbert_onnx.datasets import inputs
    from jobbert_onnx.datasets.table import KNOWN_BAD_COLUMN

    assert datasets.InputError is InputError and inputs.InputError is InputError
    assert inputs.format_of is embed_files.format_of
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read_texts(path)
    pieces = list(inputs.resolve_input(str(path)).pieces("text", None))
    reasons = [r for piece in pieces for r in piece.table[KNOWN_BAD_COLUMN].to_pylist() if r]
    assert reasons == [str(caught.value)] == [f"{path}:2: an array, not a JSON object"]


def test_missing_input_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"none\.txt: cannot read"):
        read_texts(tmp_path / "none.txt")


# -- every output format reads back --------------------------------------------------------
def test_every_output_format_reads_back_to_the_same_rows(artifact: Path, tmp_path: Path, capsys) -> None:
    texts = TRICKY + ["lone \udcff surrogate, as undecodable argv bytes arrive"]
    jsonl, npy = tmp_path / "out.jsonl", tmp_path / "out.npy"
    assert run(capsys, "embed", artifact, *texts, "--output", jsonl)[0] == 0
    assert run(capsys, "embed", artifact, *texts, "--output", npy)[0] == 0
    code, printed, _ = run(capsys, "embed", artifact, *texts)
    assert code == 0
    stdout_file = tmp_path / "stdout.jsonl"
    stdout_file.write_text(printed, encoding="utf-8")

    expected = Embedder(artifact).encode(texts)
    assert read_texts(jsonl) == texts
    assert read_texts(stdout_file) == texts
    for path in (jsonl, stdout_file):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
        np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], dtype=np.float32), expected)
    np.testing.assert_array_equal(np.load(npy), expected)

    # Our JSONL is an input too: embedding it again gives the same rows in the same order.
    again = tmp_path / "again.npy"
    assert run(capsys, "embed", artifact, "--input", jsonl, "--output", again)[0] == 0
    np.testing.assert_array_equal(np.load(again), expected)


def test_txt_input_rows_line_up_with_the_output(artifact: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "titles.txt"
    source.write_bytes("nurse\n\njava\x85developer\nsenior\u2028python\n".encode("utf-8"))
    out = tmp_path / "out.jsonl"
    assert run(capsys, "embed", artifact, "--input", source, "--output", out)[0] == 0
    assert read_texts(out) == ["nurse", "", "java\x85developer", "senior\u2028python"]


# -- output files --------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_output_file_mode_follows_the_umask(artifact: Path, tmp_path: Path, capsys, umask: int, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    previous = os.umask(umask)
    try:
        code, _, err = run(capsys, "embed", artifact, "nurse", "--output", out)
    finally:
        os.umask(previous)
    assert code == 0, err
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    ("make_output", "fragment"),
    [
        (lambda tmp: (tmp / "out.npy").mkdir() or tmp / "out.npy", "is a directory"),
        (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt" / "out.npy", "not a folder"),
        (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt" / "sub" / "out.jsonl", "not a folder"),
    ],
    ids=["output-is-a-directory", "parent-is-a-file", "ancestor-is-a-file"],
)
def test_unwritable_output_fails_before_encoding(artifact, tmp_path, capsys, encode_calls, make_output, fragment) -> None:
    out = make_output(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(capsys, "embed", artifact, "nurse", "--output", out)
    assert code == 1
    assert_error(err, str(out), fragment)
    assert encode_calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_output_folders_are_created(artifact: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "a" / "b" / "out.jsonl"
    assert run(capsys, "embed", artifact, "nurse", "--output", out)[0] == 0
    assert read_texts(out) == ["nurse"]


def test_ctrl_c_while_encoding_leaves_no_partial_file(artifact, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out.npy"
    out.write_bytes(b"old")

    def interrupted(self, texts, **kwargs):
        assert len(list(tmp_path.iterdir())) == 2  # the staging file exists while encoding runs
        raise KeyboardInterrupt

    monkeypatch.setattr(Embedder, "encode", interrupted)
    code, _, err = run(capsys, "embed", artifact, "nurse", "--output", out)
    assert code == 130 and "interrupted" in err
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]
    assert out.read_bytes() == b"old"


def test_failed_write_leaves_the_old_file_and_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("old", encoding="utf-8")
    with pytest.raises(ValueError, match="3 texts but 2 embeddings"):
        write_embeddings(out, ["a", "b", "c"], np.zeros((2, 4), dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"] and out.read_text(encoding="utf-8") == "old"
    with pytest.raises(OutputFileError, match=r"out\.txt: unknown output format"):
        write_embeddings(tmp_path / "out.txt", ["a"], np.zeros((1, 4), dtype=np.float32))


def test_unknown_output_format_fails_before_encoding(artifact, tmp_path, capsys, encode_calls) -> None:
    code, _, err = run(capsys, "embed", artifact, "nurse", "--output", tmp_path / "out.csv")
    assert code == 1 and encode_calls == []
    assert_error(err, "out.csv", ".npy", ".jsonl")


def test_jsonl_output_is_streamed(tmp_path: Path) -> None:
    texts = [f"title {i}" for i in range(5000)]
    embeddings = np.random.default_rng(0).normal(size=(len(texts), 96)).astype(np.float32)
    out = tmp_path / "out.jsonl"
    tracemalloc.start()
    try:
        write_embeddings(out, texts, embeddings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = out.stat().st_size
    assert size > 8_000_000
    assert peak < 1_000_000, f"peak {peak / 1e6:.1f} MB to write {size / 1e6:.1f} MB"
    assert read_texts(out) == texts


# -- --prompt-name -------------------------------------------------------------------------
def test_prompt_name_reaches_encode(artifact: Path, capsys, encode_calls) -> None:
    assert run(capsys, "embed", artifact, "nurse", "--prompt-name", "query")[0] == 0
    assert run(capsys, "embed", artifact, "nurse")[0] == 0
    assert [call.get("prompt_name") for call in encode_calls] == ["query", None]


# -- the artifact summary ------------------------------------------------------------------
def test_info_prints_the_summary_lines(artifact: Path, capsys) -> None:
    lines = summary_lines(Manifest.load(artifact), artifact)
    assert lines[0] == f"artifact   {artifact}"
    assert "pooling    mean -> 8" in lines
    assert "head       anchor (default): 6 dims [Dense]" in lines
    assert "head       positive: 5 dims [Dense]" in lines
    assert not any(line.startswith("artifact") for line in summary_lines(Manifest.load(artifact)))
    code, out, _ = run(capsys, "info", artifact)
    assert code == 0 and out == "\n".join(lines) + "\n"


def test_cli_and_its_modules_import_neither_torch_nor_the_exporter() -> None:
    # The CLI reads the exporter's choices from `export.defaults`, which is torch-free by design.
    allowed = {"jobbert_onnx.export", "jobbert_onnx.export.defaults"}
    code = (
        "import sys, jobbert_onnx.cli, jobbert_onnx.artifact_summary, jobbert_onnx.embed_files\n"
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'onnx'}\n"
        f"print([m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('jobbert_onnx.export') and m not in {allowed!r}])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
