"""`jobbert-onnx serve`'s start-up checks, in-process: every number in range, the API key from every source.

Each bad value must stop the command with one line `jobbert-onnx: error: ...` naming the flag (or
argparse's own error for a value that is not a number at all), before the model loads: the
artifact path below does not exist, so reaching the model would name the artifact instead.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from jobbert_onnx.serve.cli import main
from jobbert_onnx.serve.config import Connections, Limits, ServerConfig

from .serve_fakes import FakeEmbedder, serving

MISSING = "/nonexistent/jobbert-artifact"

# flag -> (is an integer flag, values that must be refused beyond nan/inf/-1)
NUMERIC_FLAGS = {
    "--port": (True, ["65536", "70000"]),
    "--threads": (True, ["0"]),
    "--max-body-bytes": (True, ["0"]),
    "--max-inputs": (True, ["0"]),
    "--max-chars": (True, ["0"]),
    "--max-batch-items": (True, ["0"]),
    "--max-batch-tokens": (True, ["0"]),
    "--max-queue-items": (True, ["0"]),
    "--cache-entries": (True, []),
    "--max-connections": (True, ["0"]),
    "--max-header-bytes": (True, ["0", "100"]),
    "--batch-wait-ms": (False, ["1e999"]),
    "--queue-timeout": (False, ["0", "1e999"]),
    "--cache-mb": (False, ["1e999", "1e300"]),
    "--drain-seconds": (False, ["1e999", "1e12"]),
    "--shutdown-timeout": (False, ["1e999", "1e12"]),
    "--header-timeout": (False, ["0", "1e999"]),
    "--body-timeout": (False, ["0", "1e999"]),
}


def serve(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run the serve CLI in-process; (exit code, non-empty stderr lines)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("flag", sorted(NUMERIC_FLAGS))
def test_every_numeric_flag_refuses_nan_inf_negative_and_out_of_range(flag, capsys):
    integer, extra = NUMERIC_FLAGS[flag]
    for value in ["nan", "inf", "-inf", "-1", *extra]:
        code, lines = serve([MISSING, f"{flag}={value}"], capsys)
        assert code not in (0, None), (flag, value)
        assert lines and flag in lines[-1], (flag, value, lines)
        if integer and value in ("nan", "inf", "-inf", "1e999"):
            assert "invalid int value" in lines[-1]  # argparse refuses what is not an integer
        else:
            assert code == 1 and len(lines) == 1, (flag, value, lines)
            assert lines[0].startswith("jobbert-onnx: error: "), lines
            assert MISSING not in lines[0], f"{flag}={value} was checked only after loading the model"


@pytest.mark.parametrize("flag, value", [
    ("--port", "0"), ("--port", "65535"), ("--batch-wait-ms", "0"), ("--cache-mb", "0"), ("--cache-entries", "0"),
    ("--drain-seconds", "0"), ("--shutdown-timeout", "0"), ("--queue-timeout", "0.5"), ("--max-connections", "10"),
    ("--max-header-bytes", "8192"), ("--header-timeout", "2.5"), ("--body-timeout", "60"), ("--threads", "1"),
])
def test_valid_numbers_pass_the_checks_and_reach_the_model(flag, value, capsys):
    code, lines = serve([MISSING, flag, value], capsys)
    assert code == 1 and len(lines) == 1 and MISSING in lines[0], lines


def test_checks_sit_with_the_settings_for_programmatic_use():
    for bad in (Limits(queue_timeout_s=math.nan), Limits(cache_mb=math.inf), Limits(max_inputs=True),
                Limits(max_chars=2.5), Limits(batch_wait_ms=6000, queue_timeout_s=5)):
        with pytest.raises(ValueError):
            bad.check_values()
    for bad_config in (ServerConfig(drain_seconds=math.inf), ServerConfig(shutdown_timeout_s=-1),
                       ServerConfig(connections=Connections(header_timeout_s=math.nan)),
                       ServerConfig(connections=Connections(max_connections=0)), ServerConfig(api_key="")):
        with pytest.raises(ValueError):
            bad_config.check()
    Limits().check_values()
    ServerConfig().check()


# -- the API key ---------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["flag", "env", "file"])
@pytest.mark.parametrize("raw", ["", "   ", "\n", "two words", "tab\tinside", "line\nbreak", "clé", "bell\x07"])
def test_an_empty_or_unusable_key_refuses_to_start(source, raw, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JOBBERT_ONNX_API_KEY", raising=False)
    argv = [MISSING]
    if source == "flag":
        argv += ["--api-key", raw]
        where = "--api-key"
    elif source == "env":
        monkeypatch.setenv("JOBBERT_ONNX_API_KEY", raw)
        where = "JOBBERT_ONNX_API_KEY"
    else:
        key_file = tmp_path / "key"
        key_file.write_bytes(raw.encode("utf-8"))
        argv += ["--api-key-file", str(key_file)]
        where = str(key_file)
    code, lines = serve(argv, capsys)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("jobbert-onnx: error: ") and where in lines[0], lines
    assert MISSING not in lines[0]


def test_surrounding_whitespace_is_stripped_from_every_source(tmp_path, monkeypatch):
    from jobbert_onnx.serve.cli import api_key

    key_file = tmp_path / "key"
    key_file.write_bytes(b"  s3cret\r\n\n")
    monkeypatch.setenv("JOBBERT_ONNX_API_KEY", "s3cret\n")
    assert api_key(argparse.Namespace(api_key=None, api_key_file=None)) == "s3cret"
    assert api_key(argparse.Namespace(api_key=None, api_key_file=str(key_file))) == "s3cret"
    assert api_key(argparse.Namespace(api_key=" s3cret\t", api_key_file=None)) == "s3cret"


def test_a_key_with_a_trailing_newline_lets_the_right_key_in(embedder, monkeypatch):
    """The key as `$(cat key-file)`-less deployments set it: with its newline. The right key gets 200."""
    import asyncio

    from jobbert_onnx.serve.cli import api_key

    monkeypatch.setenv("JOBBERT_ONNX_API_KEY", "s3cret\n")
    key = api_key(argparse.Namespace(api_key=None, api_key_file=None))

    async def scenario():
        async with serving(FakeEmbedder(embedder), api_key=key) as (client, _):
            right = await client.post("/embed", json={"inputs": "nurse"}, headers={"Authorization": "Bearer s3cret"})
            wrong = await client.post("/embed", json={"inputs": "nurse"}, headers={"Authorization": "Bearer nope"})
            return right, wrong

    right, wrong = asyncio.run(scenario())
    assert right.status_code == 200 and wrong.status_code == 401
    np.testing.assert_allclose(right.json(), embedder.encode(["nurse"], normalize=True), rtol=1e-6, atol=1e-7)


def test_the_flags_are_built_from_the_settings_fields():
    """Each setting is declared once (its dataclass field): every flag-backed field is a `serve` flag
    with the field's default, and a value given on the command line reaches that field."""
    from jobbert_onnx.serve import cli
    from jobbert_onnx.serve.config import flag_fields

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    defaults = parser.parse_args(["serve", MISSING])
    for settings in (Limits, Connections, ServerConfig):
        for name, bound, default, text in flag_fields(settings):
            assert getattr(defaults, name) == default and f"(default " in text
            value = "7" if bound.integer else "7.5"
            given = parser.parse_args(["serve", MISSING, bound.flag, value])
            built = settings(**cli._settings(settings, given))
            assert getattr(built, name) == (int(value) if bound.integer else float(value)), bound.flag


FLAGS_START = "<!-- flags table: from `jobbert-onnx serve --help` (serve/cli.py, serve/config.py), checked by tests/test_serve_flags.py -->"
FLAGS_END = "<!-- end of the flags table -->"


def flags_table() -> str:
    """docs/serving.md's flags table, as the parser declares each flag (help text, then its default)."""
    import re

    from jobbert_onnx.serve.cli import add_parser

    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    rows = ["| flag | default | what |", "|---|---|---|"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        match = re.fullmatch(r"(.*) \(default (.*)\)", action.help, re.S)
        what, default = match.groups() if match else (action.help, "")
        if action.metavar == "SECONDS":
            default += " s"
        if action.choices:
            what += " (" + ", ".join(f"`{c}`" for c in action.choices) + ")"
        metavar = f" {action.metavar}" if action.metavar and action.metavar != "SECONDS" else ""
        rows.append(f"| `{action.option_strings[0]}{metavar}` | {default} | {what} |")
    return "\n".join(rows)


def test_docs_flags_table_is_the_parsers() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "serving.md").read_text(encoding="utf-8")
    documented = text.split(FLAGS_START, 1)[1].split(FLAGS_END, 1)[0].strip()
    assert documented == flags_table(), f"docs/serving.md's flags table should read:\n{flags_table()}"
