"""Which tokenizer the artifact ships, and the texts on which the two candidates disagree.

A checkpoint's tokenizer can run two ways:

* ``transformers``: what ``AutoTokenizer`` builds, and so what sentence-transformers runs on the
  installed transformers. transformers 5 rebuilds some tokenizers (XLM-RoBERTa's among them) from
  the vocabulary in ``tokenizer.json`` instead of running the file: it keeps a ``Precompiled``
  normalizer and silently drops any other (``NFKC``, for one).
* ``checkpoint``: the checkpoint's ``tokenizer.json`` as it is, as transformers 4, TEI and
  fastembed run it.

Both run through the runtime's `TextTokenizer` (strip, lower-casing, truncation), so a text listed
as a disagreement is exactly one whose embedding depends on the choice.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from jobbert_onnx.runtime.manifest import TokenizerEntry
from jobbert_onnx.runtime.tokenization import TextTokenizer

from .checkpoint import CheckpointSpec
from .modules.base import CheckpointError

CHECKPOINT_FILE = "tokenizer.json"
MAX_EXAMPLES = 5  # disagreements kept in the manifest, with both id lists
_BATCH = 256  # texts per encode_batch call: bounds the padded arrays for large --calibration files


class TokenizerDisagreementWarning(UserWarning):
    """The checkpoint's tokenizer.json and transformers' tokenizer give some texts different token ids."""


@dataclass
class Disagreement:
    """One text with the token ids (special tokens included, truncated) of each tokenizer."""

    text: str
    checkpoint_ids: list[int]
    transformers_ids: list[int]
    checkpoint_tokens: list[str]
    transformers_tokens: list[str]

    def first_difference(self) -> int:
        pairs = zip(self.checkpoint_ids, self.transformers_ids)
        return next((i for i, (a, b) in enumerate(pairs) if a != b),
                    min(len(self.checkpoint_ids), len(self.transformers_ids)))


@dataclass
class TokenizerCheck:
    """Both tokenizers run on the probes and calibration texts; which one the artifact ships."""

    chosen: str
    texts_compared: int
    disagreements: list[Disagreement]
    probe_disagreements: int  # how many of them are validation probes
    transformers_version: str
    skipped: str | None = None  # why nothing was compared

    def validation_probes(self, probes: list[str]) -> list[str]:
        """The probes that validation can compare with sentence-transformers on this machine.

        With the checkpoint's tokenizer, a probe that transformers splits differently cannot match
        sentence-transformers (its input ids differ), so it is left out, and recorded as such.
        """
        if self.chosen != "checkpoint":
            return probes
        differing = {d.text for d in self.disagreements}
        kept = [probe for probe in probes if probe not in differing]
        if not kept:
            raise CheckpointError(
                "--tokenizer checkpoint: transformers tokenizes every validation probe differently from the "
                "checkpoint's tokenizer.json, so the artifact cannot be validated against sentence-transformers. "
                "Pass --no-validate to export it anyway, or --tokenizer transformers."
            )
        return kept

    def to_manifest(self) -> dict[str, Any]:
        if self.skipped:
            return {"chosen": self.chosen, "compared": False, "reason": self.skipped}
        return {
            "chosen": self.chosen,
            "compared": True,
            "candidates": {"checkpoint": f"the checkpoint's {CHECKPOINT_FILE} as is",
                           "transformers": f"AutoTokenizer, transformers {self.transformers_version}"},
            "texts_compared": self.texts_compared,
            "disagreements": len(self.disagreements),
            # With the checkpoint's tokenizer, these probes are left out of validation.
            "probe_disagreements": self.probe_disagreements,
            "examples": [vars(d) for d in self.disagreements[:MAX_EXAMPLES]],
        }

    def warning(self) -> str:
        """One line: how many texts differ, one example at its first differing token, what to do."""
        example = self.disagreements[0]
        at = example.first_difference()
        shown = example.text if len(example.text) <= 30 else example.text[:29] + "…"
        tokens = {name: " ".join(getattr(example, f"{name}_tokens")[at:at + 3]) or "(end)"
                  for name in ("checkpoint", "transformers")}
        head = (f"the checkpoint's {CHECKPOINT_FILE} and the tokenizer transformers {self.transformers_version} "
                f"builds from it give different token ids for {len(self.disagreements)} of {self.texts_compared} "
                f"probe and calibration texts, e.g. {shown!r} at token {at}: {tokens['checkpoint']!r} vs "
                f"{tokens['transformers']!r}.")
        if self.chosen == "transformers":
            tail = ("The artifact uses transformers' tokenizer, as sentence-transformers does here; "
                    "--tokenizer checkpoint matches TEI, fastembed and sentence-transformers on transformers 4.")
        elif self.probe_disagreements:
            tail = (f"The artifact uses the checkpoint's {CHECKPOINT_FILE}; validation leaves out the "
                    f"{self.probe_disagreements} probe(s) that sentence-transformers tokenizes differently here.")
        else:
            tail = f"The artifact uses the checkpoint's {CHECKPOINT_FILE}; no validation probe is affected."
        return f"{head} {tail} Details: tokenizer_check in manifest.json."


def tokenizer_entry(spec: CheckpointSpec, tokenizer) -> TokenizerEntry:
    """How the runtime calls the artifact's tokenizer (`tokenizer`: the chosen transformers tokenizer)."""
    return TokenizerEntry(
        file="tokenizer.json",
        max_seq_length=spec.transformer.max_seq_length,
        do_lower_case=spec.transformer.do_lower_case,
        pad_token_id=int(tokenizer.pad_token_id),
        pad_token=str(tokenizer.pad_token),
    )


def _load_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        raise CheckpointError(f"{path}: cannot load the tokenizer ({exc}).") from exc


def _token_ids(tokenizer: Tokenizer, spec: TokenizerEntry, texts: list[str]) -> list[list[int]]:
    """Each text's ids as the runtime computes them with `tokenizer`, padding removed."""
    text_tokenizer = TextTokenizer(tokenizer, spec)
    ids = []
    for start in range(0, len(texts), _BATCH):
        batch = text_tokenizer(texts[start:start + _BATCH])
        ids += [row[mask == 1].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return ids


def compare_tokenizers(checkpoint: Tokenizer, rebuilt: Tokenizer, spec: TokenizerEntry,
                       texts: list[str]) -> list[Disagreement]:
    """The texts whose token ids differ between the checkpoint's tokenizer and transformers' rebuild
    (its backend), both run as the runtime runs them."""
    # TextTokenizer configures the tokenizer it is given, so each side gets its own copy.
    copies = [Tokenizer.from_str(t.to_str()) for t in (checkpoint, rebuilt)]
    file_ids, rebuilt_ids = (_token_ids(copy, spec, texts) for copy in copies)
    return [
        Disagreement(text, a, b, [checkpoint.id_to_token(i) for i in a], [rebuilt.id_to_token(i) for i in b])
        for text, a, b in zip(texts, file_ids, rebuilt_ids) if a != b
    ]


def _transformers_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder}: transformers cannot load the tokenizer ({exc}).") from exc
    if not tokenizer.is_fast or tokenizer.pad_token_id is None:
        raise CheckpointError(
            f"{folder}: the tokenizer must be a fast tokenizer with a pad token, "
            "so that the runtime can reproduce it with the tokenizers library."
        )
    return tokenizer


def choose_tokenizer(spec: CheckpointSpec, choice: str, probes: list[str],
                     other_texts: list[str]) -> tuple[Any, TokenizerCheck]:
    """Load both tokenizers, compare them on `probes` and `other_texts`, and return the chosen one
    as a transformers tokenizer, with the comparison.

    Warns (`TokenizerDisagreementWarning`) when they disagree. `checkpoint` without a tokenizer.json
    raises `CheckpointError`; `transformers` then ships what transformers builds from the slow files.
    """
    from transformers import PreTrainedTokenizerFast, __version__

    folder = spec.transformer.path
    file = folder / CHECKPOINT_FILE
    if choice == "checkpoint" and not file.is_file():
        raise CheckpointError(
            f"{file}: missing, so --tokenizer checkpoint has no tokenizer.json to ship. Pass --tokenizer "
            "transformers to ship the tokenizer transformers builds from the checkpoint's other tokenizer files."
        )
    auto = _transformers_tokenizer(folder)
    if not file.is_file():
        skipped = f"the checkpoint has no {CHECKPOINT_FILE}; transformers built the tokenizer from its other files"
        return auto, TokenizerCheck(choice, 0, [], 0, __version__, skipped=skipped)

    checkpoint = _load_file(file)
    texts = list(dict.fromkeys([*probes, *other_texts]))  # each text once, in order
    disagreements = compare_tokenizers(checkpoint, auto.backend_tokenizer, tokenizer_entry(spec, auto), texts)
    probe_set = set(probes)
    check = TokenizerCheck(choice, len(texts), disagreements, sum(d.text in probe_set for d in disagreements),
                           __version__)
    if disagreements:
        warnings.warn(check.warning(), TokenizerDisagreementWarning, stacklevel=3)
    if choice == "transformers":
        return auto, check
    # The same special tokens and model inputs as transformers' tokenizer, the file's pipeline as is.
    chosen = PreTrainedTokenizerFast(tokenizer_object=checkpoint, pad_token=auto.pad_token,
                                     model_input_names=auto.model_input_names)
    return chosen, check
