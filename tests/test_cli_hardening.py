"""`embed` and `verify` against a hostile user (issue 15): an output that is the input, inputs with
endless lines (/dev/zero), and a manifest whose graph entries name files that are not the graphs
the runtime expects. Toy artifact, in process, no torch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from jobbert_onnx import embed_files
from jobbert_onnx.cli import main
from jobbert_onnx.runtime import ArtifactError, Manifest
from jobbert_onnx.runtime.manifest import MANIFEST_NAME


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobbert-onnx: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# -- 12: an output that is the input ---------------------------------------------------------------
def same_file(tmp_path: Path, how: str, source: Path) -> Path:
    """Another name for `source`, ending in .jsonl: itself, a relative spelling, a symbolic link or a hard link."""
    if how == "same":
        return source
    if how == "spelled":
        (tmp_path / "sub").mkdir()
        return tmp_path / "sub" / ".." / source.name
    target = tmp_path / f"other-{how}.jsonl"
    if how == "symlink":
        target.symlink_to(source)
    else:
        os.link(source, target)
    return target


@pytest.mark.parametrize(("name", "how"), [("in.jsonl", "same"), ("in.jsonl", "spelled"), ("in.jsonl", "symlink"),
                                           ("in.jsonl", "hardlink"), ("in.txt", "symlink"), ("in.txt", "hardlink")])
def test_embed_refuses_an_output_that_is_its_input(artifact: Path, tmp_path: Path, capsys, name: str, how: str) -> None:
    source = tmp_path / name
    content = '{"text": "nurse"}\n{"text": "care"}\n' if name.endswith(".jsonl") else "nurse\ncare\n"
    source.write_text(content)
    output = same_file(tmp_path, how, source)
    code, _, err = run(capsys, "embed", artifact, "--input", source, "--output", output)
    assert code == 1
    one_error_line(err, str(output), "is the input")
    assert source.read_text() == content
    assert output.exists()


def test_embed_writes_beside_its_input(artifact: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "nurse"}\n')
    code, _, err = run(capsys, "embed", artifact, "--input", source, "--output", tmp_path / "out.jsonl")
    assert code == 0, err
    assert json.loads((tmp_path / "out.jsonl").read_text())["text"] == "nurse"


# -- 15d: endless lines ----------------------------------------------------------------------------
def test_embed_from_dev_zero_is_one_line(artifact: Path, tmp_path: Path, capsys) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    code, _, err = run(capsys, "embed", artifact, "--input", "/dev/zero", "--output", tmp_path / "x.npy")
    assert code == 1
    one_error_line(err, "/dev/zero:1:", "longer than")
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(("suffix", "content", "line"), [
    (".txt", "nurse\ncare\n{long}\nred\n", 3),
    (".jsonl", '{{"text": "nurse"}}\n{{"text": "{long}"}}\n', 2),
    (".csv", "id,text\n1,nurse\n2,\"care\n{long}\"\n", 4),  # a quoted field's second line
])
def test_a_line_over_the_limit_names_the_file_and_line(tmp_path: Path, monkeypatch, suffix: str, content: str,
                                                       line: int) -> None:
    monkeypatch.setattr(embed_files, "MAX_LINE_CHARS", 100)
    source = tmp_path / f"in{suffix}"
    source.write_text(content.format(long="x" * 150))
    with pytest.raises(embed_files.InputFileError, match=rf"in\{suffix}:{line}: a line longer than 100 characters"):
        embed_files.read_texts(source)
    source.write_text(content.format(long="x" * 60))
    assert any("x" * 60 in text for text in embed_files.read_texts(source))  # under the limit: read as before


# -- 15e: verify checks that each graph is a graph of its kind -------------------------------------
@pytest.fixture
def copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "artifact"))


def point(folder: Path, role: str, rel: str) -> None:
    """Make the manifest's `role` entry name `rel` (a file it lists, so the checksums still pass)."""
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    entry = data["heads"][role.split(".")[1]] if role.startswith("heads.") else data[role]
    entry["file"] = rel
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("role", "rel", "why"), [
    ("heads.anchor", "tokenizer.json", "not an ONNX graph"),
    ("encoder", "tokenizer.json", "not an ONNX graph"),
    ("pooling", "heads/anchor.onnx", "inputs"),
    ("heads.positive", "encoder.onnx", "inputs"),
])
def test_verify_names_a_graph_entry_that_is_not_its_graph(copy: Path, capsys, role: str, rel: str, why: str) -> None:
    graph_files = Manifest.load(copy).graph_files()
    assert rel in graph_files or rel == "tokenizer.json"  # the toy artifact's names
    point(copy, role, rel)
    Manifest.load(copy).verify_files(copy)  # every checksum still matches: only the graphs' content tells
    code, out, err = run(capsys, "verify", copy)
    assert code == 1 and "OK" not in out
    one_error_line(err, str(copy / rel), why)
    with pytest.raises(ArtifactError, match=why):
        Manifest.load(copy).verify_graphs(copy)


def test_verify_still_passes_a_good_artifact(artifact: Path, capsys) -> None:
    code, out, err = run(capsys, "verify", artifact)
    assert code == 0, err
    assert out.startswith("OK:")
