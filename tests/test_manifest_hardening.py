"""Hostile and careless manifests (issue 8, defects 3 and 7) and the manifest's prompt fields.

Every file the manifest names must stay inside the artifact folder and be refused before it is
touched; every field is type- and range-checked in `Manifest.from_dict`, and each failure is an
`ArtifactError` naming the manifest and the field. Built on the toy artifact: no torch needed.
"""

from __future__ import annotations

import json
import re
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from . import toy_artifact as toy
from jobbert_onnx import Embedder
from jobbert_onnx.cli import main
from jobbert_onnx.runtime import ArtifactError, Manifest
from jobbert_onnx.runtime.manifest import MANIFEST_NAME, FileEntry, sha256_of

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture
def copy(artifact: Path, tmp_path: Path) -> Path:
    """A private copy of the toy artifact that a test may damage."""
    return Path(shutil.copytree(artifact, tmp_path / "artifact"))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the artifact, holding a file the artifact must never reach."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.bin").write_bytes(b"not yours")
    return folder


def rewrite(folder: Path, edit: Edit) -> Path:
    """Apply `edit` to the parsed manifest of `folder` and write it back; returns its path."""
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def list_file(data: dict[str, Any], rel: str, source: Path) -> None:
    """List `rel` in the manifest's `files` with the size and sha256 of `source`, as a forger would."""
    data["files"][rel] = {"size": source.stat().st_size, "sha256": sha256_of(source)}


def assert_refused(folder: Path, *fragments: str, verify: bool = True) -> str:
    """`Manifest.load` (+ `verify_files`) and `Embedder` both refuse `folder`, with an ArtifactError
    whose message holds every fragment; returns the message."""
    with pytest.raises(ArtifactError) as caught:
        manifest = Manifest.load(folder)
        if verify:
            manifest.verify_files(folder)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    with pytest.raises(ArtifactError):
        Embedder(folder)
    return message


# -- defect 3: every path stays inside the artifact folder ---------------------------------------
HOSTILE_PATHS = {
    "parent": "../outside/secret.bin",
    "absolute": "{outside}/secret.bin",
    "backslashes": "..\\outside\\secret.bin",
    "drive letter": "C:/outside/secret.bin",
    "dot-dot inside": "heads/../../outside/secret.bin",
    "empty component": "heads//anchor.onnx",
    "dot component": "./encoder.onnx",
    "NUL byte": "encoder.onnx\u0000.txt",
}
ROLES = {
    "tokenizer.file": lambda data, rel: data["tokenizer"].__setitem__("file", rel),
    "encoder.file": lambda data, rel: data["encoder"].__setitem__("file", rel),
    "pooling.file": lambda data, rel: data["pooling"].__setitem__("file", rel),
    "heads.anchor.file": lambda data, rel: data["heads"]["anchor"].__setitem__("file", rel),
}


@pytest.mark.parametrize("kind", HOSTILE_PATHS)
def test_files_entries_outside_the_folder_are_refused(copy: Path, outside: Path, kind: str) -> None:
    rel = HOSTILE_PATHS[kind].format(outside=outside)
    rewrite(copy, lambda data: list_file(data, rel, outside / "secret.bin"))
    assert_refused(copy, str(copy / MANIFEST_NAME), "files", "relative path inside the artifact folder")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["parent", "absolute", "dot-dot inside"])
def test_role_files_outside_the_folder_are_refused(copy: Path, outside: Path, role: str, kind: str) -> None:
    # The outside file holds the role's own bytes and its forged entry matches: before, it was read
    # and accepted.
    rel = HOSTILE_PATHS[kind].format(outside=outside)
    current = copy / {"tokenizer.file": "tokenizer.json", "encoder.file": "encoder.onnx",
                      "pooling.file": "pooling.onnx", "heads.anchor.file": "heads/anchor.onnx"}[role]
    shutil.copyfile(current, outside / "secret.bin")

    def edit(data: dict[str, Any]) -> None:
        ROLES[role](data, rel)
        list_file(data, rel, outside / "secret.bin")

    rewrite(copy, edit)
    assert_refused(copy, str(copy / MANIFEST_NAME), role, "relative path inside the artifact folder")


def test_verify_does_not_reveal_whether_an_outside_file_exists(copy: Path, outside: Path) -> None:
    messages = []
    for name in ("secret.bin", "no-such-file.bin"):
        folder = Path(shutil.copytree(copy, copy.parent / f"probe-{name}"))
        rel = str(outside / name)
        rewrite(folder, lambda data: data["files"].__setitem__(rel, {"size": 9, "sha256": "0" * 64}))
        message = assert_refused(folder, "relative path inside the artifact folder")
        messages.append(message.replace(str(folder), "ARTIFACT").replace(name, "NAME"))
    assert messages[0] == messages[1]


def test_symlinked_file_to_outside_is_refused(copy: Path, outside: Path) -> None:
    # Same bytes, so the sha256 matches: before, the link was followed and accepted.
    target = outside / "positive.onnx"
    shutil.copyfile(copy / "heads" / "positive.onnx", target)
    (copy / "heads" / "positive.onnx").unlink()
    (copy / "heads" / "positive.onnx").symlink_to(target)
    assert_refused(copy, str(copy / "heads" / "positive.onnx"), "symbolic link")


def test_symlinked_folder_to_outside_is_refused(copy: Path, outside: Path) -> None:
    shutil.move(copy / "heads", outside / "heads")
    (copy / "heads").symlink_to(outside / "heads", target_is_directory=True)
    assert_refused(copy, str(copy / "heads"), "symbolic link")


def test_symlink_to_a_secret_is_refused_without_reading_it(copy: Path, outside: Path) -> None:
    (copy / "notes.txt").symlink_to(outside / "secret.bin")
    rewrite(copy, lambda data: list_file(data, "notes.txt", outside / "secret.bin"))
    assert_refused(copy, str(copy / "notes.txt"), "symbolic link")


def test_symlink_within_the_folder_is_refused(copy: Path) -> None:
    # An artifact holds regular files only: the exporter writes no links, and a link is the one way
    # for a confined relative path to lead elsewhere.
    shutil.move(copy / "tokenizer.json", copy / "real-tokenizer.json")
    (copy / "tokenizer.json").symlink_to("real-tokenizer.json")
    rewrite(copy, lambda data: list_file(data, "real-tokenizer.json", copy / "real-tokenizer.json"))
    assert_refused(copy, str(copy / "tokenizer.json"), "symbolic link")


def test_symlinked_manifest_is_refused(copy: Path, outside: Path) -> None:
    shutil.move(copy / MANIFEST_NAME, outside / MANIFEST_NAME)
    (copy / MANIFEST_NAME).symlink_to(outside / MANIFEST_NAME)
    assert_refused(copy, str(copy / MANIFEST_NAME), "symbolic link")


def test_artifact_folder_reached_through_a_symlink_still_loads(artifact: Path, tmp_path: Path) -> None:
    link = tmp_path / "linked-artifact"
    link.symlink_to(artifact, target_is_directory=True)
    Manifest.load(link).verify_files(link)
    assert Embedder(link).encode(["nurse"]).shape == (1, 6)


@pytest.mark.parametrize("twin", ["Encoder.onnx", "ENCODER.ONNX", "encoder.ONNX"])
def test_same_file_listed_twice_is_refused(copy: Path, twin: str) -> None:
    # One file on a case-insensitive file system (Windows, macOS by default).
    rewrite(copy, lambda data: list_file(data, twin, copy / "encoder.onnx"))
    assert_refused(copy, str(copy / MANIFEST_NAME), "files", "listed twice", verify=False)


def test_unicode_twins_are_refused(copy: Path) -> None:
    # "é" precomposed and decomposed: one file on a normalizing file system (macOS HFS+).
    composed = unicodedata.normalize("NFC", "heads/caf\u00e9.onnx")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed

    def edit(data: dict[str, Any]) -> None:
        list_file(data, composed, copy / "encoder.onnx")
        list_file(data, decomposed, copy / "encoder.onnx")

    rewrite(copy, edit)
    assert_refused(copy, str(copy / MANIFEST_NAME), "listed twice", verify=False)


def test_duplicate_json_key_in_files_is_refused(copy: Path) -> None:
    path = copy / MANIFEST_NAME
    text = path.read_text(encoding="utf-8")
    entry = json.dumps({"size": 1, "sha256": "0" * 64})
    path.write_text(text.replace('"files": {', f'"files": {{"encoder.onnx": {entry}, ', 1), encoding="utf-8")
    assert_refused(copy, str(path), "duplicate key", "encoder.onnx", verify=False)


def test_manifest_cannot_list_itself(copy: Path) -> None:
    rewrite(copy, lambda data: data["files"].__setitem__(MANIFEST_NAME, {"size": 1, "sha256": "0" * 64}))
    assert_refused(copy, str(copy / MANIFEST_NAME), "files", MANIFEST_NAME, verify=False)


def _with_external_encoder(folder: Path) -> None:
    """Re-save the toy encoder with its weights in `encoder.onnx.data` (as the exporter does) and
    re-record the files."""
    (folder / "encoder.onnx").unlink()
    onnx.save(toy.encoder_model(), str(folder / "encoder.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="encoder.onnx.data", size_threshold=256)
    manifest = Manifest.load(folder)
    manifest.record_files(folder)
    manifest.save(folder)


def test_external_data_left_out_of_files_is_refused(copy: Path) -> None:
    _with_external_encoder(copy)
    assert "encoder.onnx.data" in Manifest.load(copy).files
    reference = Embedder(copy).encode(["senior python developer"])
    # Leave the weights out of the file list, then damage them: before, nothing noticed.
    rewrite(copy, lambda data: data["files"].pop("encoder.onnx.data"))
    data = bytearray((copy / "encoder.onnx.data").read_bytes())
    data[:4] = b"\x7f\x7f\x7f\x7f"
    (copy / "encoder.onnx.data").write_bytes(bytes(data))
    assert_refused(copy, str(copy / "encoder.onnx.data"), "not listed in")
    assert reference.shape == (1, 6)


def test_any_unlisted_file_is_refused(copy: Path) -> None:
    # A graph may name any file of its folder as external data, so every file must be listed.
    (copy / "heads" / "extra.bin").write_bytes(b"\0" * 16)
    assert_refused(copy, str(copy / "heads" / "extra.bin"), "not listed in")


def _graph_with_external_data(location: str) -> onnx.ModelProto:
    """A head-shaped graph (sentence_embedding -> embedding) whose weight lives at `location`."""
    weight = numpy_helper.from_array(toy.HEAD_WEIGHTS["anchor"], "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    size = toy.HEAD_WEIGHTS["anchor"].nbytes
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["sentence_embedding", "W"], ["projected"]),
         helper.make_node("Tanh", ["projected"], ["embedding"])],
        "hostile",
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", toy.HIDDEN])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 6])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", toy.OPSET)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("location", ["../../outside/weights.bin", "{outside}/weights.bin"])
def test_onnxruntime_refuses_external_data_outside_the_graph_folder(copy: Path, outside: Path, location: str) -> None:
    """The runtime relies on onnxruntime (1.32) to keep a listed graph's external data inside the
    graph's own folder; this guards that reliance against a future onnxruntime."""
    (outside / "weights.bin").write_bytes(toy.HEAD_WEIGHTS["anchor"].tobytes())
    graph = copy / "heads" / "anchor.onnx"
    graph.write_bytes(_graph_with_external_data(location.format(outside=outside)).SerializeToString())
    manifest = Manifest.load(copy)
    manifest.files["heads/anchor.onnx"] = FileEntry(size=graph.stat().st_size, sha256=sha256_of(graph))
    manifest.save(copy)
    manifest.verify_files(copy)  # every listed file is intact and inside: only onnxruntime sees the location
    with pytest.raises(ArtifactError, match=re.escape(str(graph))):
        Embedder(copy)
    with pytest.raises(Exception, match="External data path|Absolute path"):
        ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])


# -- defect 7: every field's type and range -------------------------------------------------------
def _set(*path: str, value: Any) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _drop(*path: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return edit


MALFORMED: dict[str, tuple[Edit, str]] = {
    "max_seq_length string": (_set("tokenizer", "max_seq_length", value="64"), "tokenizer.max_seq_length"),
    "max_seq_length negative": (_set("tokenizer", "max_seq_length", value=-1), "tokenizer.max_seq_length"),
    "max_seq_length zero": (_set("tokenizer", "max_seq_length", value=0), "tokenizer.max_seq_length"),
    "max_seq_length huge": (_set("tokenizer", "max_seq_length", value=10**30), "tokenizer.max_seq_length"),
    "max_seq_length float": (_set("tokenizer", "max_seq_length", value=64.0), "tokenizer.max_seq_length"),
    "max_seq_length bool": (_set("tokenizer", "max_seq_length", value=True), "tokenizer.max_seq_length"),
    "do_lower_case string": (_set("tokenizer", "do_lower_case", value="yes"), "tokenizer.do_lower_case"),
    "pad_token_id negative": (_set("tokenizer", "pad_token_id", value=-1), "tokenizer.pad_token_id"),
    "pad_token null": (_set("tokenizer", "pad_token", value=None), "tokenizer.pad_token"),
    "strip string": (_set("tokenizer", "strip", value="false"), "tokenizer.strip"),
    "tokenizer missing field": (_drop("tokenizer", "pad_token"), "tokenizer.pad_token"),
    "tokenizer unknown field": (_set("tokenizer", "padding_side", value="left"), "tokenizer.padding_side"),
    "tokenizer null": (_set("tokenizer", value=None), "tokenizer"),
    "hidden_size float": (_set("encoder", "hidden_size", value=8.5), "encoder.hidden_size"),
    "hidden_size string": (_set("encoder", "hidden_size", value="8"), "encoder.hidden_size"),
    "hidden_size zero": (_set("encoder", "hidden_size", value=0), "encoder.hidden_size"),
    "input_names string": (_set("encoder", "input_names", value="input_ids"), "encoder.input_names"),
    "input_names number": (_set("encoder", "input_names", value=["input_ids", 3]), "encoder.input_names"),
    "input_names unknown": (_set("encoder", "input_names", value=["input_ids", "position_ids"]), "encoder.input_names"),
    "input_names twice": (_set("encoder", "input_names", value=["input_ids", "input_ids"]), "encoder.input_names"),
    "encoder transform null": (_set("encoder", "transform", value=None), "encoder.transform"),
    "pooling dimension float": (_set("pooling", "dimension", value=8.0), "pooling.dimension"),
    "pooling modes empty": (_set("pooling", "modes", value=[]), "pooling.modes"),
    "include_prompt string": (_set("pooling", "include_prompt", value="no"), "pooling.include_prompt"),
    "head dimension float": (_set("heads", "anchor", "dimension", value=6.0), "heads.anchor.dimension"),
    "head dimension string": (_set("heads", "anchor", "dimension", value="6"), "heads.anchor.dimension"),
    "head dimension null": (_set("heads", "anchor", "dimension", value=None), "heads.anchor.dimension"),
    "head modules number": (_set("heads", "anchor", "modules", value=[1]), "heads.anchor.modules"),
    "head null": (_set("heads", "anchor", value=None), "heads.anchor"),
    "heads empty": (_set("heads", value={}), "heads"),
    "heads list": (_set("heads", value=[]), "heads"),
    "heads empty name": (lambda data: data["heads"].__setitem__("", data["heads"]["positive"]), "heads"),
    "default head unknown": (_set("default_head", value="query"), "default_head"),
    "default head null": (_set("default_head", value=None), "default_head"),
    "format_version true": (_set("format_version", value=True), "format_version"),
    "format_version float": (_set("format_version", value=1.0), "format_version"),
    "format_version string": (_set("format_version", value="1"), "format_version"),
    "format_version missing": (_drop("format_version"), "format_version"),
    "opset string": (_set("opset", value="17"), "opset"),
    "opset negative": (_set("opset", value=-17), "opset"),
    "precision number": (_set("precision", value=16), "precision"),
    "source null": (_set("source", value=None), "source"),
    "source revision number": (_set("source", "revision", value=3), "source.revision"),
    "versions number": (_set("versions", "jobbert_onnx", value=1), "versions.jobbert_onnx"),
    "validation null": (_set("validation", value=None), "validation"),
    "validation list": (_set("validation", value=[]), "validation"),
    "validation heads list": (_set("validation", value={"performed": True, "heads": []}), "validation.heads"),
    "validation cosine string": (_set("validation", value={"performed": True, "heads": {
        "anchor": {"min_cosine": "high", "mean_cosine": 1.0}}}), "validation.heads.anchor.min_cosine"),
    "validation cosine missing": (_set("validation", value={"performed": True, "heads": {
        "anchor": {"mean_cosine": 1.0}}}), "validation.heads.anchor.min_cosine"),
    "validation performed string": (_set("validation", "performed", value="no"), "validation.performed"),
    "tokenizer_check null": (_set("tokenizer_check", value=None), "tokenizer_check"),
    "tokenizer_check without choice": (_set("tokenizer_check", value={"compared": True}), "tokenizer_check.chosen"),
    "tokenizer_check count string": (_set("tokenizer_check", value={
        "chosen": "transformers", "compared": True, "texts_compared": "5", "disagreements": 0}),
        "tokenizer_check.texts_compared"),
    "int8 plan without attempts": (_set("encoder", "transform", value={"method": "int8", "plan": {
        "chosen": 0, "met_margin": True, "target_min_cosine": 0.995}}), "encoder.transform.plan.attempts"),
    "files null": (_set("files", value=None), "files"),
    "file size string": (_set("files", "encoder.onnx", "size", value="12"), "files.encoder.onnx.size"),
    "file size negative": (_set("files", "encoder.onnx", "size", value=-1), "files.encoder.onnx.size"),
    "file sha256 short": (_set("files", "encoder.onnx", "sha256", value="abc"), "files.encoder.onnx.sha256"),
    "file entry unknown field": (_set("files", "encoder.onnx", "mode", value=420), "files.encoder.onnx.mode"),
    "graph not listed": (_drop("files", "pooling.onnx"), "pooling.file"),
    "unknown top-level field": (_set("encoders", value={}), "encoders"),
    "prompts list": (_set("prompts", value=["query: "]), "prompts"),
    "prompt number": (_set("prompts", value={"query": 3}), "prompts.query"),
    "default prompt unknown": (_set("default_prompt_name", value="query"), "default_prompt_name"),
    "default prompt number": (_set("default_prompt_name", value=1), "default_prompt_name"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_field_names_the_manifest_and_the_field(copy: Path, case: str) -> None:
    edit, field_name = MALFORMED[case]
    path = rewrite(copy, edit)
    message = assert_refused(copy, verify=False)
    assert message.startswith(f"{path}: "), message
    assert re.search(rf"(?<![\w.]){re.escape(field_name)}(?![\w])", message), message


def _write_raw(folder: Path, text: str) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(text, encoding="utf-8")
    return path


def test_duplicate_top_level_key_is_refused(copy: Path) -> None:
    path = copy / MANIFEST_NAME
    text = path.read_text(encoding="utf-8")
    _write_raw(copy, text.replace('"opset":', '"opset": 99, "opset":', 1))
    assert_refused(copy, str(path), "duplicate key", "opset", verify=False)


@pytest.mark.parametrize("where", ["document", "validation"])
def test_deeply_nested_json_is_an_artifact_error(copy: Path, where: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    if where == "document":
        path = _write_raw(copy, deep)
    else:
        text = (copy / MANIFEST_NAME).read_text(encoding="utf-8")
        path = _write_raw(copy, text.replace('"validation": {', f'"validation": {{"deep": {deep}, ', 1))
    assert_refused(copy, str(path), "nest", verify=False)


def test_moderately_nested_record_is_refused(copy: Path) -> None:
    # Deep enough for json to parse, too deep for anything that later walks it recursively.
    path = rewrite(copy, _set("validation", "deep", value=json.loads("[" * 500 + "]" * 500)))
    assert_refused(copy, str(path), "nest", verify=False)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_refused(copy: Path, constant: str) -> None:
    text = (copy / MANIFEST_NAME).read_text(encoding="utf-8")
    path = _write_raw(copy, text.replace('"validation": {', f'"validation": {{"x": {constant}, ', 1))
    assert_refused(copy, str(path), constant, verify=False)


@pytest.mark.parametrize("text", ["[]", "null", '"manifest"', "", "{", "\udcff"])
def test_manifest_that_is_not_an_object(copy: Path, text: str) -> None:
    path = copy / MANIFEST_NAME
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert_refused(copy, str(path), verify=False)


def test_huge_integer_is_an_artifact_error(copy: Path) -> None:
    text = (copy / MANIFEST_NAME).read_text(encoding="utf-8")
    path = _write_raw(copy, re.sub(r'"opset": \d+', '"opset": ' + "9" * 5000, text, count=1))
    assert_refused(copy, str(path), verify=False)


def test_checks_that_sat_in_the_embedder_are_in_the_manifest(copy: Path) -> None:
    rewrite(copy, _set("default_head", value="nope"))
    with pytest.raises(ArtifactError, match=r"default_head 'nope' must be one of the heads \['anchor', 'positive'\]"):
        Manifest.load(copy)
    rewrite(copy, _set("default_head", value="anchor"))
    rewrite(copy, _set("encoder", "input_names", value=["input_ids", "attention_mask", "pixel_values"]))
    with pytest.raises(ArtifactError, match="encoder.input_names.*pixel_values"):
        Manifest.load(copy)


# -- manifests the exporter writes stay readable ---------------------------------------------------
def test_toy_manifest_round_trips(artifact: Path) -> None:
    manifest = Manifest.load(artifact)
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def test_older_manifest_without_the_newer_fields_loads(copy: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        for key in ("tokenizer_check", "prompts", "default_prompt_name"):
            data.pop(key, None)
        data["pooling"].pop("include_prompt", None)
        data["tokenizer"].pop("strip", None)
        for entry in (data["encoder"], data["pooling"], *data["heads"].values()):
            entry.pop("transform", None)

    rewrite(copy, edit)
    rewrite(copy, lambda data: data.update(format_version=1))  # what the exporter wrote before prompts
    manifest = Manifest.load(copy)
    manifest.verify_files(copy)
    assert manifest.tokenizer_check == {} and manifest.prompts == {} and manifest.default_prompt_name is None
    assert manifest.pooling.include_prompt is True and manifest.tokenizer.strip is True
    assert manifest.encoder.transform == {}


def test_exporter_shaped_records_load(copy: Path) -> None:
    """The nested records export/pipeline.py writes (validation, an int8 plan, a tokenizer check)."""
    validation = {"performed": True, "reference": "sentence-transformers on PyTorch (fp32, CPU)", "probe_count": 40,
                  "min_cosine_threshold": 0.99, "heads": {name: {"min_cosine": 0.995, "mean_cosine": 0.999,
                                                                 "max_abs_error": 0.01} for name in toy.HEAD_DIMS}}
    transform = {"method": "int8", "plan": {"margin": 0.005, "target_min_cosine": 0.995, "chosen": 1,
                                           "met_margin": True, "attempts": [{"fp32_matmuls": 0, "min_cosine": 0.98},
                                                                            {"fp32_matmuls": 4, "min_cosine": 0.996}]}}
    check = {"chosen": "transformers", "compared": True, "candidates": {"checkpoint": "a", "transformers": "b"},
             "texts_compared": 572, "disagreements": 1, "probe_disagreements": [],
             "examples": [{"text": "x", "checkpoint_ids": [0, 1], "transformers_ids": [0, 2]}]}

    def edit(data: dict[str, Any]) -> None:
        data.update(validation=validation, tokenizer_check=check)
        data["encoder"]["transform"] = transform
        data["source"] = {"model": "/models/x", "kind": "local", "revision": None}

    rewrite(copy, edit)
    manifest = Manifest.load(copy)
    assert manifest.validation == validation and manifest.encoder.transform == transform
    assert manifest.tokenizer_check == check and manifest.source["revision"] is None


# -- prompts ---------------------------------------------------------------------------------------
def test_prompt_fields_default_and_round_trip(copy: Path) -> None:
    manifest = Manifest.load(copy)
    assert manifest.prompts == {} and manifest.default_prompt_name is None and manifest.pooling.include_prompt
    manifest.prompts = {"query": "query: ", "passage": ""}
    manifest.default_prompt_name = "query"
    manifest.pooling.include_prompt = False
    manifest.save(copy)
    saved = json.loads((copy / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert saved["prompts"] == {"query": "query: ", "passage": ""} and saved["default_prompt_name"] == "query"
    assert saved["pooling"]["include_prompt"] is False
    assert Manifest.load(copy) == manifest


# -- the CLI on hostile artifacts: one line, no traceback ------------------------------------------
def _absolute_file(folder: Path, outside: Path) -> None:
    rewrite(folder, lambda data: list_file(data, str(outside / "secret.bin"), outside / "secret.bin"))


def _symlink(folder: Path, outside: Path) -> None:
    # The linked file holds the same bytes: before, `verify` followed the link and said OK.
    shutil.move(folder / "tokenizer.json", outside / "tokenizer.json")
    (folder / "tokenizer.json").symlink_to(outside / "tokenizer.json")


def _deep(folder: Path, outside: Path) -> None:
    _write_raw(folder, "{" + '"a":{' * 100_000 + "}" * 100_001)


HOSTILE: dict[str, Callable[[Path, Path], None]] = {
    "absolute path": _absolute_file,
    "deep JSON": _deep,
    "string max_seq_length": lambda folder, _: rewrite(folder, _set("tokenizer", "max_seq_length", value="64")),
    "null validation": lambda folder, _: rewrite(folder, _set("validation", value=None)),
    "validation heads list": lambda folder, _: rewrite(folder, _set("validation", "heads", value=[])),
    "bad tokenizer check": lambda folder, _: rewrite(folder, _set("tokenizer_check", value={"compared": True})),
    "int8 plan with no attempts": lambda folder, _: rewrite(
        folder, _set("encoder", "transform", value={"plan": {"attempts": []}})),
    "source revision number": lambda folder, _: rewrite(folder, _set("source", "revision", value=7)),
}


CASES = [(command, case) for case in HOSTILE for command in ("verify", "info")] + [("verify", "symlink")]


@pytest.mark.parametrize(("command", "case"), CASES)
def test_cli_prints_one_line_for_a_hostile_artifact(copy: Path, outside: Path, capsys, command: str, case: str) -> None:
    # `info` reads only the manifest, so a link among the files is for `verify` (and `embed`) to find.
    (_symlink if case == "symlink" else HOSTILE[case])(copy, outside)
    capsys.readouterr()
    assert main([command, str(copy)]) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobbert-onnx: error: "), captured.err
    assert "Traceback" not in captured.err and str(copy) in lines[0]
    assert "not yours" not in captured.out + captured.err
