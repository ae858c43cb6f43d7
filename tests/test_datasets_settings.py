"""The dataset settings, declared once (`datasets.defaults.DatasetSettings`): the flags, the Python API's
checks, the resume check and the settings table of docs/datasets.md all come from its fields.

The flag and settings tests need no pyarrow; the runs use the toy artifact.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pytest

from jobbert_onnx.datasets import cli as datasets_cli
from jobbert_onnx.datasets.defaults import SAME_EMBEDDINGS, SAME_RUN, DatasetSettings, flag_fields, resume_keys

DOCS = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"
TABLE_START = "<!-- settings table: from datasets.defaults.DatasetSettings, checked by tests/test_datasets_settings.py -->"
TABLE_END = "<!-- end of the settings table -->"


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    datasets_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["embed-dataset", "artifact", "in", "out", *flags])


def settings_of(args: argparse.Namespace) -> DatasetSettings:
    return DatasetSettings(**{item.name: getattr(args, item.name) for _, item in flag_fields()})


def test_the_flags_default_to_the_settings_defaults() -> None:
    assert settings_of(parse()) == DatasetSettings()
    flagged = {item.name for _, item in flag_fields()}
    assert set(f.name for f in dataclasses.fields(DatasetSettings)) - flagged == {"dedup"}  # Python only


def test_flags_and_keywords_give_the_same_settings() -> None:
    args = parse("--column", "title", "--id-column", "id", "--head", "positive", "--normalize", "--prompt-name",
                 "query", "--engine", "ray", "--workers", "3", "--threads", "2", "--batch-rows", "50",
                 "--batch-size", "8", "--device", "cuda:1", "--on-bad-row", "skip", "--input-format", "csv",
                 "--cache-mb", "0.5", "--max-row-mb", "4", "--ray-address", "auto", "--no-progress")
    assert settings_of(args) == DatasetSettings().replace(
        text_column="title", id_column="id", head="positive", normalize=True, prompt_name="query", engine="ray",
        workers=3, threads=2, batch_rows=50, batch_size=8, device="cuda:1", on_bad_row="skip", input_format="csv",
        cache_mb=0.5, max_row_mb=4.0, ray_address="auto", show_progress=False)
    settings_of(args).check(flags=True)
    with pytest.raises(SystemExit):  # argparse refuses a choice that is not one
        parse("--engine", "spark")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("engine", "spark", "{engine}='spark': must be one of local, ray."),
    ("on_bad_row", None, "{on_bad_row}=None: must be one of fail, skip."),
    ("input_format", "xml", "{input_format}='xml': must be one of parquet, csv, json."),
    ("batch_rows", 0, "{batch_rows}=0: must be an integer from 1 to 100,000,000."),
    ("cache_mb", math.nan, "{cache_mb}=nan: must be a number from 0 to 65,536."),
    ("cache_mb", None, "{cache_mb}=None: must be a number from 0 to 65,536."),
    ("workers", 2, "{workers} applies to the Ray engine; the local engine is one process (set {threads})."),
])
def test_each_error_names_the_setting_and_the_value(name: str, value, message: str) -> None:
    """In Python by its keyword, on the command line by its flag."""
    settings = DatasetSettings().replace(**{name: value})
    names = [item.name for item in dataclasses.fields(DatasetSettings)]
    for flags, shown in ((False, {n: n for n in names}), (True, {n: "--" + n.replace("_", "-") for n in names})):
        with pytest.raises(ValueError) as caught:
            settings.check(flags=flags)
        assert str(caught.value) == message.format(**shown)


def test_none_passes_only_where_it_is_the_default() -> None:
    DatasetSettings(threads=None, id_column=None, input_format=None).check()
    with pytest.raises(ValueError, match="^batch_size=None"):
        DatasetSettings(batch_size=None).check()


def test_an_unknown_keyword_is_named(artifact: Path, tmp_path: Path) -> None:
    from jobbert_onnx.datasets import embed_dataset

    with pytest.raises(TypeError, match=r"'batchrows' is not a dataset setting; the settings are: text_column, "):
        embed_dataset(artifact, tmp_path / "in.csv", tmp_path / "out", batchrows=10)
    assert not (tmp_path / "out").exists()


def test_the_signature_lists_every_setting() -> None:
    import inspect

    from jobbert_onnx.datasets import embed_dataset

    parameters = inspect.signature(embed_dataset).parameters
    for item in dataclasses.fields(DatasetSettings):
        assert parameters[item.name].default == item.default and parameters[item.name].kind.name == "KEYWORD_ONLY"


def test_the_resume_record_keeps_its_keys() -> None:
    """`_run.json` of folders started before keeps being read: the record's keys stay as they were."""
    assert resume_keys(SAME_EMBEDDINGS) == ("head", "normalize", "prompt_name")
    assert resume_keys(SAME_RUN) == ("text_column", "id_column", "engine", "rows_per_shard", "input_format")
    record = DatasetSettings(normalize=1, batch_rows=7).resume_record(head="anchor", input_format="csv")
    assert record == {"text_column": "text", "id_column": None, "head": "anchor", "normalize": True,
                      "prompt_name": None, "engine": "local", "rows_per_shard": 7, "input_format": "csv"}


def test_a_resumed_run_with_other_settings_is_told_the_flag(artifact: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from jobbert_onnx.datasets import OutputFolderError, embed_dataset

    source = tmp_path / "in.csv"
    source.write_text("id,job title,text\n1,nurse,care\n2,python developer,code\n")
    out = tmp_path / "out"
    embed_dataset(artifact, source, out, text_column="job title", batch_rows=1, show_progress=False)
    with pytest.raises(OutputFolderError, match="started with text_column 'job title', this run has 'text': resume "
                                                "with --text-column 'job title', or"):
        embed_dataset(artifact, source, out, show_progress=False)
    with pytest.raises(OutputFolderError, match="started with id_column None, this run has 'id': resume without "
                                                "--id-column"):
        embed_dataset(artifact, source, out, text_column="job title", id_column="id", show_progress=False)
    with pytest.raises(OutputFolderError, match="started with rows_per_shard 1, this run has 10000: resume with "
                                                "--batch-rows 1"):
        embed_dataset(artifact, source, out, text_column="job title", show_progress=False)
    assert json.loads((out / "_run.json").read_text())["rows_per_shard"] == 1


def test_table_embedder_checks_its_settings(embedder) -> None:
    pytest.importorskip("pyarrow")
    from jobbert_onnx.datasets import TableEmbedder

    for name, value in (("batch_size", 0), ("cache_mb", -1), ("on_bad_row", "ignore")):
        with pytest.raises(ValueError, match=rf"^{name}="):
            TableEmbedder(embedder, text_column="text", **{name: value})


def settings_table() -> str:
    """The settings table of docs/datasets.md, as the fields declare it."""
    lines = ["| flag | Python keyword | default | allowed | kept on resume | what it is |",
             "|---|---|---|---|---|---|"]
    for item in dataclasses.fields(DatasetSettings):
        meta = item.metadata
        flags = dict((entry.name, f) for f, entry in flag_fields()).get(item.name)
        flag = " ".join(f"`{f}`" for f in flags) if flags else "(Python only)"
        default = meta["shown"] or f"`{item.default!r}`"
        if meta["bound"] is not None:
            bound = meta["bound"]
            allowed = (f"integer, {bound.low:,} to {bound.high:,}" if bound.integer else
                       f"number, {bound.low:g} to {bound.high:,}")
        elif meta["choices"] is not None:
            allowed = ", ".join(f"`{c}`" for c in meta["choices"])
        else:
            allowed = ""
        kept = "yes" if meta["resume"] in (SAME_EMBEDDINGS, SAME_RUN) else ""
        lines.append(f"| {flag} | `{item.name}` | {default} | {allowed} | {kept} | {meta['help']} |")
    return "\n".join(lines)


def test_the_docs_list_the_settings_as_declared() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert TABLE_START in text and TABLE_END in text, f"docs/datasets.md lacks the markers {TABLE_START!r}"
    documented = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert documented == settings_table(), f"docs/datasets.md's settings table should read:\n{settings_table()}"
