"""The exporter never writes outside its folders, never deletes what it did not write, and cleans
up after itself even when killed (issue 8, defects 2, 4 and 6)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from jobbert_onnx.export import ExportConfig, export_model
from jobbert_onnx.runtime import Embedder
from jobbert_onnx.runtime.manifest import Manifest

pytestmark = pytest.mark.full  # exports checkpoints

OWNER_FILE = "owner.json"  # the marker naming the process that writes a staging folder
SAFE_HEAD_FILE = re.compile(r"heads/[a-z0-9][a-z0-9_-]*\.onnx")


def run_cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """`jobbert-onnx ARGS` in this process; returns the exit code and stderr."""
    from jobbert_onnx import cli

    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> str:
    assert code != 0
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if line.startswith("jobbert-onnx: error:")]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its sha256, to prove nothing was touched."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def with_routes(model: Path, dst: Path, routes: dict[str, float]) -> Path:
    """A copy of the legacy-Asym fixture whose routes are `routes`: each a Dense of its own, the
    anchor Dense with its weight scaled by the given factor, so that every head differs."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, dst)
    asym = dst / "2_Asym"
    config = json.loads((asym / "config.json").read_text())
    template = asym / config["structure"]["anchor"][0]
    dense_config = (template / "config.json").read_text()
    weights = load_file(str(template / "model.safetensors"))
    for old in config["types"]:
        shutil.rmtree(asym / old)
    config["types"], config["structure"] = {}, {}
    for index, (route, scale) in enumerate(routes.items()):
        module = f"{index}_Dense"
        (asym / module).mkdir()
        (asym / module / "config.json").write_text(dense_config)
        save_file({**weights, "linear.weight": weights["linear.weight"] * scale}, str(asym / module / "model.safetensors"))
        config["types"][module] = "sentence_transformers.models.Dense"
        config["structure"][route] = [module]
    (asym / "config.json").write_text(json.dumps(config, ensure_ascii=False))
    return dst


@pytest.fixture(scope="module")
def artifact(jobbert_asym_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact of ours (no validation: only its shape matters here)."""
    out = tmp_path_factory.mktemp("safety-artifact") / "artifact"
    return export_model(ExportConfig(model=str(jobbert_asym_model), output=out, validate=False, show_progress=False))


# -- defect 2: route names are data, never paths -------------------------------------------------
def test_head_files_are_safe_and_unique():
    from jobbert_onnx.export.graphs import head_files

    names = ["anchor", "positive", "Anchor", "Query Model", "query model", "query_model", "../../pwned", "/etc/passwd",
             "запрос", "", ".", "con", "a" * 300, "x\ud800y"]
    files = head_files(names)
    assert list(files) == names
    assert files["anchor"] == "heads/anchor.onnx" and files["positive"] == "heads/positive.onnx"
    assert all(SAFE_HEAD_FILE.fullmatch(f) and len(f) < 100 for f in files.values()), files
    assert len({f.lower() for f in files.values()}) == len(names), "unique even on case-insensitive file systems"
    assert files["con"] != "heads/con.onnx", "a reserved device name on Windows"
    # A safe name equal to another name's slug-and-hash still gets a file of its own.
    clash = files["Query Model"].removeprefix("heads/").removesuffix(".onnx")
    both = head_files(["Query Model", clash])
    assert len(set(both.values())) == 2 and head_files(["Query Model"]) == {"Query Model": files["Query Model"]}


def test_route_named_like_a_path_stays_inside_the_artifact(jobbert_asym_model, tmp_path, monkeypatch):
    model = with_routes(jobbert_asym_model, tmp_path / "model", {"anchor": 1.0, "../../pwned": -1.0})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    out = export_model(ExportConfig(model=str(model), output=work / "out", validate=False, show_progress=False))

    assert not [p for p in tmp_path.rglob("*pwned*") if out not in p.parents], "written outside the artifact"
    assert [p.name for p in work.iterdir()] == ["out"] and list(scratch.iterdir()) == []
    manifest = Manifest.load(out)
    assert list(manifest.heads) == ["anchor", "../../pwned"]
    assert SAFE_HEAD_FILE.fullmatch(manifest.heads["../../pwned"].file)
    assert manifest.heads["../../pwned"].file in manifest.files
    embedder = Embedder(out)
    pwned = embedder.encode(["Data Scientist"], head="../../pwned")
    assert not np.allclose(pwned, embedder.encode(["Data Scientist"], head="anchor"))


def test_route_that_sentence_transformers_cannot_load_is_a_one_line_error(jobbert_asym_model, tmp_path, capsys):
    # torch's ModuleDict refuses names with a dot, so sentence-transformers cannot load this
    # checkpoint, and validation (which runs it) cannot either.
    model = with_routes(jobbert_asym_model, tmp_path / "model", {"anchor": 1.0, "../../pwned": -1.0})
    work = tmp_path / "work"
    work.mkdir()
    code, stderr = run_cli(capsys, "export", model, work / "out")
    assert_one_line_error(code, stderr, str(model), "sentence-transformers", "--no-validate")
    assert list(work.iterdir()) == []


def test_odd_route_names_export_with_parity_and_unique_files(jobbert_asym_model, tmp_path):
    routes = {"Query Model": 1.0, "query model": -1.0, "query-model": 0.5, "запрос": -0.5}
    model = with_routes(jobbert_asym_model, tmp_path / "model", routes)
    out = export_model(ExportConfig(model=str(model), output=tmp_path / "out", show_progress=False))
    manifest = Manifest.load(out)
    assert list(manifest.heads) == list(routes) and manifest.default_head == "Query Model"
    files = [entry.file for entry in manifest.heads.values()]
    assert all(SAFE_HEAD_FILE.fullmatch(f) for f in files) and len(set(files)) == len(files), files
    assert manifest.heads["query-model"].file == "heads/query-model.onnx"
    for route in routes:  # validation compared each head with sentence-transformers' route of that name
        assert manifest.validation["heads"][route]["min_cosine"] >= 0.99999, route
    vectors = [Embedder(out).encode(["Data Scientist"], head=route) for route in routes]
    assert all(not np.allclose(a, b) for i, a in enumerate(vectors) for b in vectors[i + 1:])


# -- defect 4: --overwrite never deletes what is not an artifact of ours -------------------------
def test_overwrite_never_touches_the_source_model(jobbert_asym_model, tmp_path, capsys):
    models = tmp_path / "models"
    model = shutil.copytree(jobbert_asym_model, models / "mymodel")
    (models / "sibling.txt").write_text("precious")
    before = snapshot(tmp_path)
    (tmp_path / "link").symlink_to(model, target_is_directory=True)

    cases = [
        ([model, model], "is the source model"),
        ([model, models], "contains the source model"),
        ([model, tmp_path / "link"], "is the source model"),
        ([tmp_path / "link", models], "contains the source model"),
    ]
    for (source, target), reason in cases:
        code, stderr = run_cli(capsys, "export", source, target, "--overwrite", "--no-validate")
        assert_one_line_error(code, stderr, reason)
        assert snapshot(tmp_path) == before, (source, target)

    # Inside the model folder is allowed (hub repos ship an onnx/ folder there); nothing else changes.
    code, stderr = run_cli(capsys, "export", model, model / "onnx", "--overwrite", "--no-validate")
    assert code == 0, stderr
    Embedder(model / "onnx")
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("models/mymodel/onnx/")}
    assert after == before


def _ours_with_notes(folder: Path, artifact: Path) -> None:
    shutil.copytree(artifact, folder)
    (folder / "notes.txt").write_text("precious")


@pytest.mark.parametrize("content, reason", [
    ({"keep.txt": "precious"}, "not a jobbert-onnx artifact (no manifest.json)"),
    ({"manifest.json": "not json {"}, "not a jobbert-onnx manifest"),
    ({"manifest.json": '{"name": "my-project", "files": {}}'}, "not a jobbert-onnx manifest"),
    ({"manifest.json": '{"format_version": true, "encoder": {}, "pooling": {}, "heads": {}, "files": {}}'},
     "not a jobbert-onnx manifest"),
    (_ours_with_notes, "not part of its jobbert-onnx artifact: notes.txt"),
], ids=["plain-folder", "broken-manifest", "foreign-manifest", "boolean-version", "artifact-with-extra-file"])
def test_overwrite_refuses_a_folder_that_is_not_an_artifact(jobbert_asym_model, artifact, tmp_path, capsys,
                                                            content, reason):
    target = tmp_path / "out"
    if callable(content):
        content(target, artifact)
    else:
        target.mkdir()
        for name, text in content.items():
            (target / name).write_text(text)
    before = snapshot(target)
    code, stderr = run_cli(capsys, "export", jobbert_asym_model, target, "--overwrite", "--no-validate")
    assert_one_line_error(code, stderr, str(target), reason, "--overwrite")
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- defect 6: a killed export leaves nothing that the next export keeps -------------------------
def _staging(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.*.partial"))


def _wait_for(parent: Path, pattern: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not list(parent.glob(pattern)) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def test_killed_export_is_cleaned_by_the_next_one_but_live_ones_are_kept(jobbert_asym_model, tmp_path):
    from jobbert_onnx.export import artifact as artifact_module

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    parent = tmp_path / "exports"
    parent.mkdir()
    target = parent / "out"
    env = {**os.environ, "TMPDIR": str(scratch)}
    export = subprocess.Popen([sys.executable, "-m", "jobbert_onnx.cli", "export", jobbert_asym_model, target,
                               "--no-validate"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(parent, ".out.*.partial", export, 300)
        # The owner marker follows the folder's creation at once (a kill between the two would leave
        # a folder that no later export can prove its own); then the fp32 graphs go to scratch.
        _wait_for(parent, f".out.*.partial/{OWNER_FILE}", export, 2)
        _wait_for(parent, ".out.*.partial/scratch/encoder.onnx", export, 120)
        os.kill(export.pid, signal.SIGKILL)  # no handler, no finally, no atexit runs
    finally:
        export.kill()
        export.wait()
    killed = _staging(parent, "out")
    assert len(killed) == 1 and not target.exists(), "the export must be killed while it is staging"
    assert not list(scratch.glob("jobbert-onnx-*")), "scratch belongs beside the target, not in $TMPDIR"
    assert (killed[0] / "scratch" / "encoder.onnx").is_file()

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        # Another export to the same target, still running: its staging folder must survive.
        live = parent / ".out.0123abcd.partial"
        live.mkdir()
        artifact_module.mark_owner(live, target, pid=sleeper.pid)
        # Same pid as a running process, but another start: the pid was reused, the owner is gone.
        reused = parent / ".out.4567cdef.partial"
        reused.mkdir()
        marker = json.loads((live / OWNER_FILE).read_text())
        (reused / OWNER_FILE).write_text(json.dumps({**marker, "started": "another process"}))
        # Not ours to delete: no marker, a name outside the pattern, another target's folder.
        unmarked = parent / ".out.89abcdef.partial"
        unmarked.mkdir()
        (unmarked / "data.bin").write_bytes(b"x")
        other_name = parent / ".out.not-ours.partial"
        shutil.copytree(killed[0], other_name)
        other_target = parent / ".other.0a1b2c3d.partial"
        shutil.copytree(killed[0], other_target)

        export_model(ExportConfig(model=str(jobbert_asym_model), output=target, validate=False, show_progress=False))
        Embedder(target)
        assert sleeper.poll() is None
        left = sorted(p.name for p in parent.iterdir())
        assert left == sorted(["out", live.name, unmarked.name, other_name.name, other_target.name]), left
    finally:
        sleeper.kill()
        sleeper.wait()


def test_int8_calibration_and_ranking_scratch_stays_beside_the_target(jobbert_asym_model, tmp_path, monkeypatch):
    """int8 calibration and the sensitivity ranking write encoder-sized graphs: they go into the
    export's staging folder, never $TMPDIR, so a killed export leaves nothing the next one cannot clean."""
    from jobbert_onnx.export import int8, sensitivity

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen: dict[str, Path | None] = {}
    # (function, index of its scratch_dir argument): the TemporaryDirectory each makes is gone by
    # the end, so the test checks where it was asked to make it.
    for module, name, index in ((int8, "channel_maxima", 4), (sensitivity, "rank_matmuls", 5)):
        original = getattr(module, name)

        def spy(*args, _original=original, _name=name, _index=index, **kwargs):
            seen[_name] = kwargs.get("scratch_dir", args[_index] if len(args) > _index else None)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    # A margin no plan can reach makes the export rank the matmuls and try every plan.
    export_model(ExportConfig(model=str(jobbert_asym_model), output=tmp_path / "out", precision="int8",
                              margin=0.5, show_progress=False))
    assert set(seen) == {"channel_maxima", "rank_matmuls"}
    for name, folder in seen.items():
        assert folder is not None and Path(folder).parent.parent == tmp_path, (name, folder)  # .out.*.partial/scratch
    assert not list(scratch.iterdir()), "int8 scratch belongs beside the target, not in $TMPDIR"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
