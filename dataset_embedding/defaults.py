"""The dataset command's settings, declared once, importable without pyarrow (the CLI lists them).

Each setting of `embed_dataset` is a field of the frozen dataclass `DatasetSettings` (`_setting`),
holding its default, its help, its allowed values (a `Bound` or a list of choices), its flags and
whether a resumed run must keep it. From these fields come the `embed-dataset` flags
(`datasets.cli`), the Python API's checks (`DatasetSettings.check`, which names the keyword, or the
flag on the command line, and the value), the settings table of docs/datasets.md (a test compares
them) and the resume check (`resume_record`, `resume_keys`: what `_run.json` records and a resumed
run must match). The structure is that of `serve.config` (`Bound`, `_bounded`, `check_bounds`),
which the server's settings use; the two packages are independent extras, so each has its own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

ENGINES = ("local", "ray")
INPUT_FORMATS = ("parquet", "csv", "json")
BAD_ROW_POLICIES = ("fail", "skip")
# What a resumed run must keep (a field's `resume`): the same embeddings (mixing two kinds in one
# dataset is refused), or the same reading and sharding of the input.
SAME_EMBEDDINGS = "embeddings"
SAME_RUN = "run"


@dataclass(frozen=True)
class Bound:
    """The range a numeric setting must lie in. The highest values are far above any useful setting;
    they keep what is derived from them (a shard held in memory, the cache's matrix, pyarrow's int32
    block size) from overflowing or asking for absurd memory before anything is read."""

    low: float
    high: float
    integer: bool = False

    def check(self, shown: str, value: Any) -> None:
        """Raise ValueError naming the setting as `shown` unless `value` is a finite number in range
        (None, a setting left to its default, is checked by the caller)."""
        if self.integer:
            ok = isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
            kind = f"an integer from {self.low:,} to {self.high:,}"
        else:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and self.low <= value <= self.high)
            kind = f"a number from {self.low:g} to {self.high:,}"
        if not ok:
            raise ValueError(f"{shown}={value!r}: must be {kind}.")


def _setting(default: Any, help: str, *, flags: tuple[str, ...] | None = None, bound: Bound | None = None,
             choices: tuple[str, ...] | None = None, shown: str | None = None, resume: str | None = None,
             record: str | None = None) -> Any:
    """A field of `DatasetSettings`. `help`: what it is, for the flag's help and the docs; `flags`:
    the command line's names (default: --the-name; () for a setting of the Python API only);
    `bound` or `choices`: the values allowed (None passes where it is the default); `shown`: how the
    help names the default, when not the value itself; `resume`: SAME_EMBEDDINGS or SAME_RUN when a
    resumed run must keep it, recorded in `_run.json` under `record` (default: the name)."""
    return field(default=default, metadata={"help": help, "flags": flags, "bound": bound, "choices": choices,
                                            "shown": shown, "resume": resume, "record": record})


@dataclass(frozen=True)
class DatasetSettings:
    """The settings of one `embed_dataset` run: every keyword of `embed_dataset` and every flag of
    `embed-dataset`. Nothing is checked on construction: `check()` does, naming the setting."""

    text_column: str = _setting("text", "column holding the texts", flags=("--text-column", "--column"),
                                resume=SAME_RUN)
    id_column: str | None = _setting(
        None, "column identifying each row, copied to the output; the Ray engine needs one",
        shown="the input row number, as the column 'row'", resume=SAME_RUN)
    head: str | None = _setting(None, "head to use", shown="the artifact's default head", resume=SAME_EMBEDDINGS)
    normalize: bool = _setting(False, "L2-normalize the embeddings", resume=SAME_EMBEDDINGS)
    prompt_name: str | None = _setting(None, "prompt of the model's config to prepend",
                                       shown="the model's default_prompt_name, if any", resume=SAME_EMBEDDINGS)
    engine: str = _setting("local", "local: one process, streaming; ray: Ray Data, with a pool of actors (workers)",
                           choices=ENGINES, resume=SAME_RUN)
    workers: int = _setting(1, "Ray actors, each with one Embedder", bound=Bound(1, 4096, integer=True))
    threads: int | None = _setting(None, "onnxruntime threads per Embedder", bound=Bound(1, 4096, integer=True),
                                   shown="one per core locally, 1 per Ray actor")
    batch_rows: int = _setting(10_000, "rows per output file and per batch: what a resumed run redoes at most",
                               bound=Bound(1, 100_000_000, integer=True), resume=SAME_RUN, record="rows_per_shard")
    batch_size: int = _setting(32, "texts per model call", bound=Bound(1, 1_000_000, integer=True))
    device: str = _setting("cpu", "cpu, cuda or cuda:N; on Ray each actor gets one GPU")
    on_bad_row: str = _setting("fail", "a null or non-string text, a null or repeated id (the first row with an "
                                       "id is kept), a malformed JSON line: fail, or skip it into "
                                       "OUTPUT/_rejects.parquet", choices=BAD_ROW_POLICIES)
    input_format: str | None = _setting(None, "the input's format", choices=INPUT_FORMATS,
                                        shown="from the file names", resume=SAME_RUN)
    cache_mb: float = _setting(128, "embeddings of recent texts kept across batches, in MB; 0: none",
                               bound=Bound(0, 65_536))
    max_row_mb: float = _setting(1, "CSV and JSON are read in blocks of this many MB: the longest row must fit "
                                    "in one", bound=Bound(0.001, 256))
    ray_address: str | None = _setting(None, "a running Ray cluster: 'auto' or ray://HOST:10001",
                                       shown="$RAY_ADDRESS, else a new Ray on this machine")
    show_progress: bool = _setting(True, "show a progress bar, in rows", flags=("--no-progress",))
    dedup: bool = _setting(True, "embed each distinct text of a batch once (off only to measure what it saves)",
                           flags=())

    def check(self, flags: bool = False) -> None:
        """Raise ValueError at the first setting that cannot work, naming it (as its `--flag` when
        `flags`, else as its keyword) and its value."""
        check_values(dataclasses.asdict(self), flags)
        if self.engine == "local" and self.workers != 1:
            raise ValueError(f"{name_of('workers', flags)} applies to the Ray engine; the local engine is one "
                             f"process (set {name_of('threads', flags)}).")
        if self.engine == "ray" and self.id_column is None:
            raise ValueError(f"the Ray engine needs an id column ({name_of('id_column', flags)}): its workers read "
                             f"the files in parallel, so there is no input row number, and Ray Data's checkpoint is "
                             f"keyed by id.")

    def replace(self, **changes: Any) -> DatasetSettings:
        """A copy with `changes`; TypeError naming a keyword that is not a setting."""
        unknown = sorted(set(changes) - set(NAMES))
        if unknown:
            raise TypeError(f"{unknown[0]!r} is not a dataset setting; the settings are: {', '.join(NAMES)}.")
        return dataclasses.replace(self, **changes)

    def resume_record(self, **resolved: Any) -> dict[str, Any]:
        """What a resumed run must keep, under the keys of `_run.json`: each field declared with
        `resume`, its value as this run resolved it (`resolved`, by field name: e.g. the head when
        the artifact's default was left to choose)."""
        values = {**dataclasses.asdict(self), **resolved}
        return {_record_key(item): bool(values[item.name]) if isinstance(item.default, bool) else values[item.name]
                for item in fields(self) if item.metadata["resume"]}


NAMES = tuple(item.name for item in fields(DatasetSettings))
_FIELDS = {item.name: item for item in fields(DatasetSettings)}


def _record_key(item: dataclasses.Field) -> str:
    return item.metadata["record"] or item.name


def name_of(name: str, flag: bool) -> str:
    """How an error names a setting: its first `--flag` on the command line, its keyword in Python."""
    flags = _FIELDS[name].metadata["flags"]
    return (flags[0] if flags else f"--{name.replace('_', '-')}") if flag else name


def check_values(values: dict[str, Any], flags: bool = False) -> None:
    """Check settings given by name (a `DatasetSettings` field each): a number in its `Bound`, a
    choice among its choices; None passes where it is the setting's default (`threads`: choose)."""
    for name, value in values.items():
        meta = _FIELDS[name].metadata
        if value is None and _FIELDS[name].default is None:
            continue
        if meta["bound"] is not None:
            meta["bound"].check(name_of(name, flags), value)
        elif meta["choices"] is not None and value not in meta["choices"]:
            raise ValueError(f"{name_of(name, flags)}={value!r}: must be one of {', '.join(meta['choices'])}.")


def resume_keys(kind: str) -> tuple[str, ...]:
    """The `_run.json` keys of the settings a resumed run must keep, of `kind` (SAME_EMBEDDINGS or SAME_RUN)."""
    return tuple(_record_key(item) for item in _FIELDS.values() if item.metadata["resume"] == kind)


def record_flag(key: str) -> str:
    """The flag of the setting recorded under `key` in `_run.json` (for 'resume with --batch-rows 10')."""
    return name_of(next(name for name, item in _FIELDS.items() if _record_key(item) == key), True)


def flag_fields() -> list[tuple[tuple[str, ...], dataclasses.Field]]:
    """(flags, field) of each setting with a flag, in declaration order."""
    out = []
    for name, item in _FIELDS.items():
        flags = item.metadata["flags"]
        if flags != ():
            out.append((flags or (name_of(name, True),), item))
    return out


def help_text(name: str) -> str:
    """A setting's help with its default, as the flag shows it."""
    item = _FIELDS[name]
    shown = item.metadata["shown"] or (None if isinstance(item.default, bool) else f"{item.default}")
    return item.metadata["help"] + (f" (default: {shown})" if shown is not None else "")
