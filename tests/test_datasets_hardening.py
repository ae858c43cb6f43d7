"""embed-dataset against a hostile user (issue 15): null and repeated ids, an output folder inside
the input, links planted in the output folder, malformed JSON lines, rows over the read block,
two runs into one folder, and numeric settings out of range. Local engine, toy artifact.

Every run here checks the count invariant: rows written + rows rejected = rows read, and the
summary says the same.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobbert_onnx.datasets import BadRowError, InputError, OutputFolderError, embed_dataset, local
from jobbert_onnx.cli import main
from tests.test_datasets import FailingEmbedder
from tests.dataset_data import distinct_texts, rows, write

REPO = Path(__file__).resolve().parents[1]
WORDS = distinct_texts(8)


def run(artifact, source, out, **kwargs):
    kwargs.setdefault("show_progress", False)
    return embed_dataset(artifact, source, out, **kwargs)


def rejects_of(out: Path) -> list[dict]:
    path = out / "_rejects.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def assert_counts(out: Path, summary: dict, rows_in_input: int, fresh: bool = True) -> None:
    """Rows written + rows rejected = rows read = the input's rows, on disk and in the summary."""
    written = pq.read_table(out).num_rows if any(out.glob("*.parquet")) else 0
    rejected = len(rejects_of(out))
    assert written + rejected == rows_in_input, (written, rejected, rows_in_input)
    assert (summary["rows_read"], summary["rows_written"], summary["rejected_rows"]) == (rows_in_input, written, rejected)
    assert json.loads((out / "_summary.json").read_text()) == summary
    if fresh:
        assert summary["rows_this_run"] == rows_in_input


# -- 11: null and repeated ids ----------------------------------------------------------------
PROBE_IDS = [1, 1, 2, None, None, 3, 3]
PROBE_TEXTS = [WORDS[0], None, WORDS[1], WORDS[2], None, None, None]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])  # CSV has no null text: an empty field is ""
@pytest.mark.parametrize("batch_rows", [2, 100])
def test_null_and_repeated_ids_are_named_rejects(artifact: Path, tmp_path: Path, suffix: str, batch_rows: int) -> None:
    source = write(pa.table({"id": pa.array(PROBE_IDS, pa.int64()), "title": PROBE_TEXTS}), tmp_path / f"in{suffix}")
    out = tmp_path / "out"
    summary = run(artifact, source, out, id_column="id", text_column="title", on_bad_row="skip", batch_rows=batch_rows)
    assert_counts(out, summary, 7)
    assert pq.read_table(out)["id"].to_pylist() == [1, 2]  # the first row of id 1 is kept
    rejects = rejects_of(out)
    assert [r["id"] for r in rejects] == [1, None, None, 3, 3]
    reasons = [r["reason"] for r in rejects]
    assert "repeated" in reasons[0] and "1" in reasons[0]
    assert reasons[1] == reasons[2] == "id is null"
    assert reasons[3] == "text is null"
    assert "repeated" in reasons[4] and "3" in reasons[4]


def test_repeated_id_fails_the_run_naming_it(artifact: Path, tmp_path: Path) -> None:
    source = write(pa.table({"id": ["a", "b", "a"], "text": WORDS[:3]}), tmp_path / "in.parquet")
    with pytest.raises(BadRowError, match=r"bad row id='a', input row 2 in .*in\.parquet: id 'a' is repeated"):
        run(artifact, source, tmp_path / "out", id_column="id")
    assert not (tmp_path / "out" / "_summary.json").exists()


def test_repeated_string_ids_across_files_and_shards(artifact: Path, tmp_path: Path) -> None:
    first = pa.table({"id": [f"k{i}" for i in range(50)], "text": [WORDS[i % 8] for i in range(50)]})
    second = pa.table({"id": [f"k{i}" for i in range(40, 70)], "text": [WORDS[i % 8] for i in range(30)]})
    write(first, tmp_path / "in" / "a.parquet")
    write(second, tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"
    summary = run(artifact, tmp_path / "in", out, id_column="id", on_bad_row="skip", batch_rows=7)
    assert_counts(out, summary, 80)
    assert sorted(pq.read_table(out)["id"].to_pylist()) == sorted(f"k{i}" for i in range(70))
    assert sorted(r["id"] for r in rejects_of(out)) == sorted(f"k{i}" for i in range(40, 50))


def test_resume_with_repeated_ids_is_exactly_once(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(local, "LOOKAHEAD_SHARDS", 1)  # one encode call per shard
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 120, 300).tolist()  # many repeats, spread over the shards
    ids[5] = ids[17] = None
    table = pa.table({"id": pa.array(ids, pa.int64()), "text": distinct_texts(300)})  # distinct tokens too
    source = write(table, tmp_path / "in.parquet")
    reference = run(artifact, source, tmp_path / "reference", id_column="id", on_bad_row="skip", batch_rows=40)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(FailingEmbedder(artifact, fail_at=4), source, out, id_column="id", on_bad_row="skip", batch_rows=40)
    summary = run(artifact, source, out, id_column="id", on_bad_row="skip", batch_rows=40)
    assert_counts(out, summary, 300, fresh=False)
    assert summary["rows_this_run"] == 300 - 3 * 40
    kept = pq.read_table(out).sort_by("id")
    assert kept["id"].to_pylist() == sorted({i for i in ids if i is not None})  # each id exactly once
    assert kept.equals(pq.read_table(tmp_path / "reference").sort_by("id"))
    assert rejects_of(out) == rejects_of(tmp_path / "reference")
    assert reference["rejected_rows"] == summary["rejected_rows"]


@pytest.mark.parametrize("kind", ["int", "uint64", "string"])
def test_seen_ids_finds_every_repeat(kind: str) -> None:
    """Against a Python set, over many batches (the sorted levels merge as they grow)."""
    from jobbert_onnx.datasets.ids import SeenIds

    rng = np.random.default_rng(1)
    seen, reference = SeenIds(), set()
    for _ in range(60):
        values = rng.integers(0, 3000, rng.integers(0, 200)).tolist()
        if kind == "uint64":
            array = pa.array([v + 2**63 for v in values], pa.uint64())
        elif kind == "string":
            array = pa.array([f"id-{v}" for v in values])
        else:
            array = pa.array(values, pa.int64())
        array = pa.concat_arrays([array, pa.nulls(3, array.type)])
        got = seen.repeats(array)
        want = []
        for value in array.to_pylist():
            want.append(value is not None and value in reference)
            if value is not None:
                reference.add(value)
        assert got.tolist() == want


# -- 13: an output folder inside the input folder -----------------------------------------------
def test_output_inside_the_input_folder_runs_twice(artifact: Path, tmp_path: Path) -> None:
    table = rows(60, distinct=20)
    write(table.slice(0, 30), tmp_path / "in" / "a.parquet")
    write(table.slice(30), tmp_path / "in" / "b.parquet")
    out = tmp_path / "in" / "emb"
    summary = run(artifact, tmp_path / "in", out, id_column="id", batch_rows=25)
    assert_counts(out, summary, 60)
    assert run(artifact, tmp_path / "in", out, id_column="id", batch_rows=25) == summary  # finished: nothing to do
    write(table, tmp_path / "in2" / "a.parquet")
    glob, out = str(tmp_path / "in2" / "**" / "*.parquet"), tmp_path / "in2" / "sub" / "emb"
    summary = run(artifact, glob, out, id_column="id", batch_rows=25)
    assert_counts(out, summary, 60)
    assert run(artifact, glob, out, id_column="id", batch_rows=25) == summary


def test_output_inside_the_input_folder_resumes(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(local, "LOOKAHEAD_SHARDS", 1)
    table = rows(200)
    write(table, tmp_path / "in" / "a.parquet")
    out = tmp_path / "in" / "sub" / "emb"
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(FailingEmbedder(artifact, fail_at=3), tmp_path / "in", out, id_column="id", batch_rows=50)
    assert len(list(out.glob("part-*.parquet"))) == 2
    summary = run(artifact, tmp_path / "in", out, id_column="id", batch_rows=50)
    assert_counts(out, summary, 200, fresh=False)
    assert summary["rows_this_run"] == 100
    assert pq.read_table(out)["id"].to_pylist() == table["id"].to_pylist()


def test_output_that_holds_the_input_is_refused(artifact: Path, tmp_path: Path) -> None:
    write(rows(10), tmp_path / "in" / "a.parquet")
    with pytest.raises(OutputFolderError, match=r"holds the input"):
        run(artifact, tmp_path / "in", tmp_path / "in", id_column="id")
    with pytest.raises(OutputFolderError, match=r"holds the input"):
        run(artifact, tmp_path / "in" / "a.parquet", tmp_path, id_column="id")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.parquet"]


# -- 14: links planted in the output folder ------------------------------------------------------
def plant_links(out: Path, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Replace OUTPUT/_rejects and OUTPUT/_checkpoint by links to a folder elsewhere; returns it and its files."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not yours")
    (elsewhere / ".part-000009.parquet.x.partial").write_text("not yours either")
    pq.write_table(pa.table({"id": [99], "reason": ["nor this"]}), elsewhere / "part-000001.parquet")
    for name in ("_rejects", "_checkpoint"):
        assert not (out / name).exists()
        (out / name).symlink_to(elsewhere, target_is_directory=True)
    return elsewhere, {p.name: p.read_bytes() for p in elsewhere.iterdir()}


def test_cleanup_never_follows_a_planted_link(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(local, "LOOKAHEAD_SHARDS", 1)
    # bad rows only from the third shard on, so that the interrupted run leaves no reject part
    table = pa.table({"id": list(range(40)), "text": [None if i % 5 == 0 and i >= 20 else text
                                                      for i, text in enumerate(distinct_texts(40))]})
    source = write(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(FailingEmbedder(artifact, fail_at=3), source, out, id_column="id", on_bad_row="skip", batch_rows=10)
    elsewhere, before = plant_links(out, tmp_path)
    summary = run(artifact, source, out, id_column="id", on_bad_row="skip", batch_rows=10)
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before  # nothing written or deleted there
    for name in ("_rejects", "_checkpoint"):
        assert not (out / name).is_symlink() and not (out / name).exists()
    assert_counts(out, summary, 40, fresh=False)
    assert [r["id"] for r in rejects_of(out)] == [20, 25, 30, 35]


def test_rejects_lost_with_a_planted_link_fail_the_run(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    """The committed shards' rejects were in the folder the link replaced: the summary would lie, so no summary."""
    monkeypatch.setattr(local, "LOOKAHEAD_SHARDS", 1)
    table = pa.table({"id": list(range(40)), "text": [None if i % 5 == 0 else text for i, text in enumerate(distinct_texts(40))]})
    source = write(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(FailingEmbedder(artifact, fail_at=3), source, out, id_column="id", on_bad_row="skip", batch_rows=10)
    for part in (out / "_rejects").iterdir():
        part.unlink()
    (out / "_rejects").rmdir()
    elsewhere, before = plant_links(out, tmp_path)
    with pytest.raises(OutputFolderError, match=r"4 rejected rows of the committed shards are missing"):
        run(artifact, source, out, id_column="id", on_bad_row="skip", batch_rows=10)
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before
    assert not (out / "_summary.json").exists()


# -- 15a: malformed JSON lines -------------------------------------------------------------------
MALFORMED = ('{"id": 1, "text": "nurse"}\n'
             '{"id": 2, "text": "care"\n'
             '\n'
             '[3, "java"]\n'
             '{"id": 4, "text": "red"}\n')


def test_malformed_json_line_is_a_named_reject(artifact: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(MALFORMED)
    out = tmp_path / "out"
    summary = run(artifact, source, out, id_column="id", on_bad_row="skip")
    assert_counts(out, summary, 4)
    assert pq.read_table(out)["id"].to_pylist() == [1, 4]
    reasons = [r["reason"] for r in rejects_of(out)]
    assert len(reasons) == 2
    assert f"{source}:2:" in reasons[0] and "not valid JSON" in reasons[0]
    assert f"{source}:4:" in reasons[1] and "not a JSON object" in reasons[1]
    # without an id column, the malformed lines still take their row numbers
    summary = run(artifact, source, tmp_path / "rows", on_bad_row="skip")
    assert_counts(tmp_path / "rows", summary, 4)
    assert pq.read_table(tmp_path / "rows")["row"].to_pylist() == [0, 3]
    assert [r["row"] for r in rejects_of(tmp_path / "rows")] == [1, 2]


def test_malformed_json_line_fails_naming_the_file_and_line(artifact: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(MALFORMED)
    with pytest.raises(BadRowError, match=rf"{source}:2: not valid JSON"):
        run(artifact, source, tmp_path / "out", id_column="id")


def test_malformed_json_line_in_a_later_block(artifact: Path, tmp_path: Path) -> None:
    lines = [json.dumps({"id": i, "text": WORDS[i % 8]}) for i in range(3000)]
    lines[2500] = '{"id": 2500, "text": '
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = run(artifact, source, out, id_column="id", on_bad_row="skip", max_row_mb=0.01)  # many blocks
    assert_counts(out, summary, 3000)
    assert [r["id"] for r in rejects_of(out)] == [None]
    assert f"{source}:2501:" in rejects_of(out)[0]["reason"]
    assert pq.read_table(out)["id"].to_pylist() == [i for i in range(3000) if i != 2500]


# -- 15b: a row over the read block --------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_row_over_the_block_names_the_flag(artifact: Path, tmp_path: Path, suffix: str) -> None:
    texts = [WORDS[0], " ".join([WORDS[1]] * 5000), WORDS[2]]  # the long one is about 40 kB
    source = write(pa.table({"id": [1, 2, 3], "text": texts}), tmp_path / f"in{suffix}")
    with pytest.raises(InputError, match=r"in\.(csv|jsonl).*--max-row-mb") as caught:
        run(artifact, source, tmp_path / "small", id_column="id", max_row_mb=0.01)
    assert "0.01" in str(caught.value)
    summary = run(artifact, source, tmp_path / "big", id_column="id", max_row_mb=0.1)
    assert_counts(tmp_path / "big", summary, 3)


# -- 15c: one run per output folder --------------------------------------------------------------
HOLDS_THE_FOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from jobbert_onnx.datasets import embed_dataset
    from jobbert_onnx.runtime import Embedder

    class Waits(Embedder):
        def pool(self, prepared, *args, **kwargs):  # the model's part, which TableEmbedder runs
            Path(sys.argv[4]).write_text("started")
            while not Path(sys.argv[5]).exists():
                time.sleep(0.05)
            return super().pool(prepared, *args, **kwargs)

    embed_dataset(Waits(sys.argv[1]), sys.argv[2], sys.argv[3], id_column="id", batch_rows=10, show_progress=False)
""")


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run never started embedding"
        time.sleep(0.05)


def test_a_second_run_into_the_same_folder_is_refused(artifact: Path, tmp_path: Path) -> None:
    source = write(rows(30), tmp_path / "in.parquet")
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", HOLDS_THE_FOLDER, str(artifact), str(source), str(out),
                              str(tmp_path / "started"), str(tmp_path / "go")], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(tmp_path / "started", first)
        with pytest.raises(OutputFolderError, match=rf"pid {first.pid} on {socket.gethostname()}"):
            run(artifact, source, out, id_column="id", batch_rows=10)
        code = main(["embed-dataset", str(artifact), str(source), str(out), "--id-column", "id", "--batch-rows", "10",
                     "--no-progress"])
        assert code == 1
        os.kill(first.pid, signal.SIGKILL)  # a lock that dies with its process
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    summary = run(artifact, source, out, id_column="id", batch_rows=10)
    assert_counts(out, summary, 30)


# -- 9: numeric settings -------------------------------------------------------------------------
BAD_NUMBERS = [("cache_mb", float("nan")), ("cache_mb", float("inf")), ("cache_mb", -5), ("cache_mb", "12"),
               ("max_row_mb", 0), ("max_row_mb", float("nan")), ("max_row_mb", 1e9), ("batch_rows", 0),
               ("batch_rows", 10**12), ("batch_size", -1), ("batch_size", 2.5), ("threads", 0), ("workers", True)]


@pytest.mark.parametrize(("name", "value"), BAD_NUMBERS)
def test_numeric_settings_out_of_range_are_refused(artifact: Path, tmp_path: Path, name: str, value) -> None:
    source = write(rows(3), tmp_path / "in.parquet")
    with pytest.raises(ValueError, match=rf"^{name}="):
        run(artifact, source, tmp_path / "out", **{name: value})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flag", "value"), [("--cache-mb", "nan"), ("--cache-mb", "inf"), ("--cache-mb", "-5"),
                                             ("--max-row-mb", "-1"), ("--batch-rows", "0"), ("--batch-size", "0"),
                                             ("--threads", "-2"), ("--workers", "0")])
def test_numeric_flags_out_of_range_are_one_line(artifact: Path, tmp_path: Path, capsys, flag: str, value: str) -> None:
    source = write(rows(3), tmp_path / "in.parquet")
    code = main(["embed-dataset", str(artifact), str(source), str(tmp_path / "out"), flag, value, "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("jobbert-onnx: error: "), lines
    assert flag in lines[0] and value in lines[0]
    assert not (tmp_path / "out").exists()


# -- 11, the Ray engine: null and repeated ids are refused before Ray starts ----------------------
@pytest.mark.parametrize(("ids", "reason"), [([1, 2, 1], r"id=1, input row 3 in .*b\.parquet: id 1 is repeated"),
                                             ([1, None, 3], r"id=None, input row 2 in .*b\.parquet: id is null")])
def test_ray_engine_refuses_null_and_repeated_ids(artifact: Path, tmp_path: Path, monkeypatch, ids, reason) -> None:
    pytest.importorskip("ray")
    from jobbert_onnx.datasets import ray_engine

    write(pa.table({"id": [7], "text": [WORDS[0]]}), tmp_path / "in" / "a.parquet")
    write(pa.table({"id": pa.array(ids, pa.int64()), "text": WORDS[:3]}), tmp_path / "in" / "b.parquet")

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(ray_engine, "_read", no_ray)
    for policy in ("fail", "skip"):  # skip too: Ray cannot tell which row of an id came first
        with pytest.raises(BadRowError, match=rf"bad row {reason}.*--engine local"):
            run(artifact, tmp_path / "in", tmp_path / f"out-{policy}", id_column="id", engine="ray",
                on_bad_row=policy)


def test_ray_engine_refuses_a_malformed_json_line(artifact: Path, tmp_path: Path) -> None:
    from jobbert_onnx.datasets import ray_engine
    from jobbert_onnx.datasets.inputs import resolve_input

    source = tmp_path / "in.jsonl"
    source.write_text(MALFORMED)
    with pytest.raises(BadRowError, match=rf"input row 1 in {source}: {source}:2: not valid JSON"):
        ray_engine.check_ids(resolve_input(str(source)), "id")
    ray_engine.check_ids(resolve_input(str(write(rows(5), tmp_path / "good.jsonl"))), "id")  # no error
