"""Long inputs (issue 8, defect 1): texts are cut before tokenizing, keeping exactly the ids that
truncation keeps, so that time and memory depend on `max_seq_length`, not on the text.

Each cut is checked against the same tokenizer run on the whole text, for every tokenizer family
the project exports: XLM-R's Unigram (as sentence-transformers 4 and 6 save it, and with NFKC),
BERT's WordPiece, the real all-MiniLM-L6-v2 and all-mpnet-base-v2 tokenizers, and a RoBERTa-style
byte-level BPE built here.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from jobbert_onnx import Embedder
from jobbert_onnx.runtime import TextTooLongError, tokenization
from jobbert_onnx.runtime.manifest import TokenizerEntry
from jobbert_onnx.runtime.tokenization import TextTokenizer
from tests.fixtures.models import load_job_titles

pytestmark = pytest.mark.full  # reads the checkpoint fixtures' tokenizers (torch)

MAX_SEQ_LENGTH = 64
SHORT = 8 * MAX_SEQ_LENGTH  # texts up to this many characters are never cut (prefix_cut._CHARS_PER_TOKEN)
WHOLE = 1024 * MAX_SEQ_LENGTH  # texts that cannot be cut are tokenized whole up to this many characters
CHECKPOINTS = ["jobbert_asym_model", "jobbert_router_model", "jobbert_nfkc_model", "bert_model",
               "minilm_model", "mpnet_model"]
TOKENIZERS = [*CHECKPOINTS, "bpe"]


def _bpe_tokenizer(titles: list[str]) -> Tokenizer:
    """A RoBERTa-style byte-level BPE, its merges learned here deterministically (most frequent
    pair first, ties by the pair), since `tokenizers`' trainers are not reproducible."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = Counter(word for title in titles for word, _ in pre.pre_tokenize_str(title))
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    splits = {word: list(word) for word in words}
    merges = []
    for _ in range(400):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            pairs.update({pair: count for pair in zip(splits[word], splits[word][1:])})
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab[a + b] = len(vocab)
        for word, parts in splits.items():
            i = 0
            while i < len(parts) - 1:
                if parts[i] == a and parts[i + 1] == b:
                    parts[i:i + 2] = [a + b]
                i += 1
    tokenizer = Tokenizer(models.BPE(vocab, merges))
    tokenizer.pre_tokenizer = pre
    tokenizer.add_special_tokens(specials)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer_files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    files = {name: request.getfixturevalue(name) / "tokenizer.json" for name in CHECKPOINTS}
    files["bpe"] = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    _bpe_tokenizer(load_job_titles()).save(str(files["bpe"]))
    return files


def _spec(max_seq_length: int = MAX_SEQ_LENGTH) -> TokenizerEntry:
    # The tokenizer.json files already lower-case where their models do.
    return TokenizerEntry(file="tokenizer.json", max_seq_length=max_seq_length, do_lower_case=False,
                          pad_token_id=0, pad_token="<pad>")


def _pair(path: Path, max_seq_length: int = MAX_SEQ_LENGTH) -> tuple[TextTokenizer, Tokenizer]:
    """The runtime's tokenizer, and the same tokenizer.json truncating the whole text (the reference)."""
    reference = Tokenizer.from_file(str(path))
    reference.no_padding()
    reference.enable_truncation(max_seq_length)
    return TextTokenizer.from_file(path, _spec(max_seq_length)), reference


def _check(runtime: TextTokenizer, reference: Tokenizer, texts: list[str]) -> None:
    expected = [reference.encode(text.strip()).ids for text in texts]
    for text, got, want in zip(texts, runtime.tokenize(texts), expected):
        assert got == want, f"{len(text)} characters, starting {text[:60]!r}: cut after {len(runtime.prepare(text))}"


# -- texts ------------------------------------------------------------------------------------
WORDS = " ".join(load_job_titles()).split()
ZH = [c for c in "".join(load_job_titles()) if "\u4e00" <= c <= "\u9fff"]
ZH_AND_RARE = ZH + [chr(c) for c in range(0x9000, 0x9000 + len(ZH) // 9)]  # a tenth unknown to the fixtures
HAZARDS = [  # characters that join a neighbour, normalize to something else, or match added tokens
    " \u0301", "\u0301 ", "\r\n", "\u0600 ", "👩\u200d💻 ", "🇩🇪🇫🇷 ", "👍🏽 ", "<mask> ", " <mask>", "</s>", "[SEP] ",
    "\u00a0", "\u3000", "\u2028", "İ ", "가각 ", "\u1100\u1161 ", "¨ ", "\u00ad ", "\u200b ", "  ", " \t ", "ＡＢＣ ",
    "ﬁ ", "ǅ ", "字字 ", " 字", "a\u0308\u0301 ", "กำ ", "ｶﾞ ", "x\u200dy ", "क्ष ", "▁ ", "'s ", "'re", "’ ", "\x1c ",
    "\u0085 ", "😀😀😀", "1" * 120 + " ", "a" * 120, "é" * 120 + " ", "\ufffd ",
]


def _text(rng: random.Random, kind: str, length: int) -> str:
    """`length` characters of one kind of text."""
    if kind == "cjk":  # Chinese without spaces: one long pre-token for XLM-R
        return "".join(rng.choices(ZH_AND_RARE, k=length))
    if kind == "word":  # one long word
        return (rng.choice(["a", "ab", "er"]) * length)[:length]
    if kind == "accents":  # one long word of accented letters
        return rng.choice(["é", "ñö"]) * length
    if kind == "marks":  # combining characters on every letter
        return "".join(rng.choice("aeo") + "\u0301\u0308"[: rng.randrange(1, 3)] for _ in range(length))[:length]
    if kind == "emoji":
        return "".join(rng.choice(["😀", "👩\u200d💻", "🇩🇪", "👍🏽", "x", " "]) for _ in range(length))[:length]
    parts, size = [], 0
    while size < length:
        if kind == "words":
            part = rng.choice(WORDS) + rng.choice([" ", " ", " ", ", ", "\n", "; "])
        else:  # mixed: everything at once
            part = rng.choice([rng.choice(WORDS) + " ", "".join(rng.choices(ZH, k=rng.randrange(1, 30))),
                               rng.choice(HAZARDS), "a" * rng.randrange(90, 130), rng.choice(WORDS)])
        parts.append(part)
        size += len(part)
    return "".join(parts)[:length]


KINDS = ["words", "mixed", "cjk", "word", "accents", "marks", "emoji"]


# -- the cut keeps the ids --------------------------------------------------------------------
@pytest.mark.parametrize("name", TOKENIZERS)
def test_cut_keeps_the_ids(tokenizer_files: dict[str, Path], name: str) -> None:
    runtime, reference = _pair(tokenizer_files[name])
    assert runtime.cuts_long_texts
    rng = random.Random(f"{name}-{MAX_SEQ_LENGTH}")
    lengths = [SHORT - 30, SHORT + 1, SHORT + 40, 2 * SHORT + 7, 5 * SHORT, 40 * SHORT]
    texts = [_text(rng, kind, length) for kind in KINDS for length in lengths]
    texts += [_text(rng, kind, 200_000) for kind in ("words", "mixed", "cjk", "word") if (name, kind) in CUT]
    _check(runtime, reference, texts)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_cut_keeps_the_ids_with_hazards_at_the_cut(tokenizer_files: dict[str, Path], name: str) -> None:
    # The cut lands just before SHORT: put each hazard at every fourth position around there.
    runtime, reference = _pair(tokenizer_files[name])
    rng = random.Random(name)
    bases = [_text(rng, "words", 2 * SHORT), _text(rng, "cjk", 2 * SHORT)]
    texts = [base[:at] + hazard + base[at:] for base in bases for hazard in HAZARDS
             for at in range(SHORT - 60, SHORT + 4, 5)]
    _check(runtime, reference, texts)


@pytest.mark.parametrize("max_seq_length", [3, 16, 128])
@pytest.mark.parametrize("name", ["jobbert_asym_model", "bert_model", "bpe"])
def test_cut_keeps_the_ids_for_other_lengths(tokenizer_files: dict[str, Path], name: str, max_seq_length: int) -> None:
    runtime, reference = _pair(tokenizer_files[name], max_seq_length)
    rng = random.Random(f"{name}-{max_seq_length}")
    short = 8 * max_seq_length
    _check(runtime, reference, [_text(rng, kind, length) for kind in KINDS
                                for length in (short + 3, 3 * short, 30 * short)])


XLMR = ["jobbert_asym_model", "jobbert_router_model", "jobbert_nfkc_model"]
WORDPIECE = ["bert_model", "minilm_model", "mpnet_model"]
# Which texts each tokenizer cuts (the rest it tokenizes whole up to a limit): texts with spaces,
# all; Chinese without spaces, XLM-R's Unigram (rule 2) and BERT's (each ideograph is a word);
# one long ASCII word, Unigram (rule 2) and WordPiece (rule 3); one long accented word, Unigram.
CUT = ([(name, kind) for name in TOKENIZERS for kind in ("words", "mixed", "emoji")]
       + [(name, "cjk") for name in XLMR + WORDPIECE]
       + [(name, "word") for name in XLMR + WORDPIECE]
       + [(name, "accents") for name in XLMR])


@pytest.mark.parametrize(("name", "kind"), CUT)
def test_long_texts_are_cut_short(tokenizer_files: dict[str, Path], name: str, kind: str) -> None:
    # What makes the check above meaningful: the texts really are cut, to a few times SHORT.
    runtime, _ = _pair(tokenizer_files[name])
    text = _text(random.Random(kind), kind, 1_000_000)
    assert len(runtime.prepare(text)) <= 4 * SHORT


UNCUT = [(name, kind) for name in TOKENIZERS for kind in KINDS if (name, kind) not in CUT]


@pytest.mark.parametrize(("name", "kind"), UNCUT)
def test_texts_that_cannot_be_cut_are_tokenized_whole_up_to_a_limit(
        tokenizer_files: dict[str, Path], name: str, kind: str) -> None:
    # No rule proves a cut for these: up to WHOLE characters they are tokenized whole (exact ids);
    # beyond, they are refused, naming the text, rather than costing time and memory without bound.
    runtime, reference = _pair(tokenizer_files[name])
    text = _text(random.Random(f"{name}-{kind}"), kind, 4 * WHOLE)
    at_limit = text[:WHOLE]
    assert runtime.prepare(at_limit) == at_limit.strip()
    _check(runtime, reference, [at_limit])
    for call in (runtime.tokenize, runtime.token_counts, runtime):
        with pytest.raises(TextTooLongError, match=rf"texts\[1\]: a text of {len(text):,} characters cannot be embedded") as info:
            call(["nurse", text])
        assert info.value.index == 1


def test_a_refused_text_is_named_by_its_place_in_the_whole_list(tokenizer_files: dict[str, Path]) -> None:
    # token_counts works COUNT_CHUNK texts at a time; the index must still count from the list's start.
    runtime, _ = _pair(tokenizer_files["bpe"])
    texts = ["nurse"] * (tokenization.COUNT_CHUNK + 500)
    texts[tokenization.COUNT_CHUNK + 400] = "x" * (WHOLE + 1)  # one BPE word: no cut is proven
    for call in (runtime.token_counts, runtime.tokenize):
        with pytest.raises(TextTooLongError) as info:
            call(texts)
        assert info.value.index == tokenization.COUNT_CHUNK + 400
        assert str(info.value).startswith(f"texts[{tokenization.COUNT_CHUNK + 400}]: ")


def test_every_uncut_kind_really_is_uncut(tokenizer_files: dict[str, Path]) -> None:
    # What keeps the test above from skipping everything: XLM-R's and BERT's tokenizers do not cut
    # combining marks, nor WordPiece a long accented word, nor byte-level BPE one long word.
    for name, kind in [("jobbert_asym_model", "marks"), ("bert_model", "accents"), ("bpe", "word")]:
        runtime, _ = _pair(tokenizer_files[name])
        text = _text(random.Random(f"{name}-{kind}"), kind, 4 * WHOLE)
        assert runtime.prepare(text[:WHOLE]) == text[:WHOLE]
        with pytest.raises(TextTooLongError):
            runtime.prepare(text)


def test_unknown_stages_are_never_cut(tokenizer_files: dict[str, Path]) -> None:
    # A Replace whose pattern is not a run of spaces could join characters across any cut.
    data = json.loads(tokenizer_files["jobbert_asym_model"].read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_str(json.dumps(data))
    tokenizer.normalizer = normalizers.Sequence([tokenizer.normalizer, normalizers.Replace(Regex("ab"), "x")])
    runtime = TextTokenizer(tokenizer, _spec())
    reference = Tokenizer.from_str(tokenizer.to_str())
    reference.enable_truncation(MAX_SEQ_LENGTH)
    assert not runtime.cuts_long_texts
    text = _text(random.Random(0), "mixed", 3 * SHORT)
    assert runtime.prepare(text) == text.strip()
    _check(runtime, reference, [text])
    with pytest.raises(TextTooLongError, match="a stage that the long-text cut does not know"):
        runtime.prepare("nurse " * WHOLE)


# -- bounded by what is kept ------------------------------------------------------------------
def test_no_overflow_kept(tokenizer_files: dict[str, Path]) -> None:
    # Before the cut, a 1 MB text left thousands of overflowing encodings (7,720 in the issue).
    for name in ("jobbert_asym_model", "bert_model"):
        runtime, _ = _pair(tokenizer_files[name])
        for kind in ("words", "cjk", "word", "mixed"):
            text = _text(random.Random(kind), kind, 1_000_000)
            [encoding] = runtime.encodings([runtime.prepare(text)])
            assert len(encoding.overflowing) <= 8, (name, kind)


def test_counting_is_chunked(tokenizer_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, reference = _pair(tokenizer_files["jobbert_asym_model"])
    rng = random.Random(1)
    texts = [_text(rng, kind, length) for kind in KINDS for length in (5, 300, 3 * SHORT)] + ["", "  "]
    expected = [len(reference.encode(text.strip()).ids) for text in texts]
    monkeypatch.setattr(tokenization, "COUNT_CHUNK", 4)  # chunk edges fall inside the list
    assert runtime.token_counts(texts).tolist() == expected
    prepared = runtime.prepare_many(texts)
    assert [len(runtime.encodings([p])[0].ids) for p in prepared] == expected


def _peak_growth_mb(setup: str, measured: str) -> float:
    """Run `setup`, then `measured`, in a fresh interpreter; the growth of its peak RSS in MB."""
    script = "\n".join([
        "import random, resource",
        f"WORDS = {WORDS[:2000]!r}",
        f"ZH = {''.join(ZH[:2000])!r}",
        textwrap.dedent(setup),
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        textwrap.dedent(measured),
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)",
    ])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def xlmr_artifact(exported) -> Path:
    return exported("jobbert_asym_model", "fp32")


def test_huge_texts_embed_like_their_prefix(xlmr_artifact: Path, exported) -> None:
    texts = [_text(random.Random(kind), kind, 2_000_000) for kind in ("words", "cjk", "word", "mixed")]
    for artifact in (xlmr_artifact, exported("bert_model", "fp32")):
        embedder = Embedder(artifact)
        for text in texts:
            prefix = text[:20 * SHORT]
            assert embedder.tokenize([text]) == embedder.tokenize([prefix])
            np.testing.assert_array_equal(embedder.encode([text, "nurse"]), embedder.encode([prefix, "nurse"]))


def test_huge_texts_use_bounded_memory(xlmr_artifact: Path) -> None:
    # A correctness bound, not a benchmark: before the cut one 10 MB text took 1.2 to 2.7 GB here.
    growth = _peak_growth_mb(f"""
        from jobbert_onnx import Embedder
        embedder = Embedder({str(xlmr_artifact)!r})
        rng = random.Random(0)
        words = " ".join(rng.choice(WORDS) for _ in range(2_000_000))[:10_000_000]
        texts = [words, "".join(rng.choices(ZH, k=10_000_000)), "a" * 10_000_000]
        embedder.encode(["warm up"])
    """, """
        embedder.encode(texts)
        embedder.encode(texts * 4, batch_size=2)
    """)
    assert growth < 150, f"peak RSS grew by {growth:.0f} MB"


def test_texts_that_cannot_be_cut_are_refused_with_bounded_memory(xlmr_artifact: Path) -> None:
    # Before the limit, 10 MB of letters with combining marks was tokenized whole: 1.8 GB here.
    growth = _peak_growth_mb(f"""
        from jobbert_onnx import Embedder
        from jobbert_onnx.runtime import TextTooLongError
        embedder = Embedder({str(xlmr_artifact)!r})
        marks = "a\u0301\u0302" * 3_400_000
        embedder.encode(["warm up"])
    """, """
        for call in (embedder.encode, embedder.token_counts, embedder.tokenize):
            try:
                call(["nurse", marks])
            except TextTooLongError as exc:
                assert exc.index == 1 and str(exc).startswith("texts[1]: a text of 10,200,000 characters"), exc
            else:
                raise AssertionError("not refused")
    """)
    assert growth < 150, f"peak RSS grew by {growth:.0f} MB"


def test_counting_many_long_texts_uses_bounded_memory(xlmr_artifact: Path) -> None:
    # Before: every text was tokenized whole, all at once (20k skill lists took 3.3 GB here).
    growth = _peak_growth_mb(f"""
        from jobbert_onnx import Embedder
        embedder = Embedder({str(xlmr_artifact)!r})
        rng = random.Random(0)
        texts = [", ".join(rng.choices(WORDS, k=1000))[:8000] for _ in range(4000)]
    """, """
        counts = embedder.token_counts(texts)
        assert counts.tolist() == [64] * len(texts), counts
    """)
    assert growth < 50, f"peak RSS grew by {growth:.0f} MB"
