"""Cut a long text before tokenizing, keeping exactly the tokens that truncation would keep.

The runtime keeps a text's first `max_seq_length` tokens, but the `tokenizers` library normalizes,
pre-tokenizes and tokenizes the whole text first, and keeps everything past the limit as
overflowing encodings: seconds and gigabytes for a text of a few megabytes. `PrefixCutter.cut`
returns a text of bounded length whose first `keep` tokens (`max_seq_length` less the special
tokens) are those of the whole text T, so both truncate to the same ids.

A tokenizer splits off added tokens, normalizes, pre-tokenizes, tokenizes each pre-token with its
model, then adds special tokens. `PrefixCutter.for_tokenizer` accepts only stages with these
properties, and returns None (no cutting: texts are tokenized whole, as before) otherwise:

* Normalizers map each character on its own, except that one of NFC, NFD, NFKC, NFKD or
  `Precompiled` may also compose a character with the marks after it, or transform a whole
  grapheme cluster. Neither reaches across two *plain* characters (`_plain`): letters, digits,
  punctuation and symbols that never join a neighbour's cluster or composition. `Replace` may
  only collapse runs of spaces.
* Pre-tokenizers split wherever the normalized text has a space, and decide any other split from
  the characters next to it.
* The model tokenizes each pre-token on its own (no BPE dropout). No added token holds a
  character that normalizes to a space.

Rule 1, a clean boundary: cut at j where T[j] normalizes to text that starts with a space (a
space; a newline under most normalizers; a CJK ideograph under BERT's), T[j-2] and T[j-1] are
plain and T[j+1] does not join T[j]. No stage then looks across j: each stage's output for T[:j]
is the start of its output for T, so the tokens of T[:j] are the first tokens of T. When T[:j]
has at least `keep` tokens, they are the kept ones.

Rule 2, a Unigram window, for one long pre-token (Chinese text, a long run of letters) under a
Metaspace or whitespace pre-tokenizer. Unigram's Viterbi pass fixes the best segmentation of a
prefix of a pre-token from that prefix alone (same pieces, scores and tie-breaks), so tokenizing
T[:j] gives T's best path to j. No piece is longer than `w` characters, so T's best path passes
through one of any `w` consecutive positions. If the cuts at `w` consecutive positions (between
*solid* characters that normalize one to one, away from any added token) all give the same
first `keep` tokens, ending before the first of them, T starts with those tokens too.

Rule 3, a long WordPiece word: WordPiece turns a word longer than `max_input_chars_per_word`
characters into one unknown token, so a longer run of ASCII letters and digits is shortened to
that length plus one without changing any token.

A text for which no rule applies (a long BPE word, a long run of combining marks or of unknown
characters, within the first part of the text) is tokenized whole when it has at most
`whole_limit` characters, and refused with `TextTooLongError` beyond: its ids cannot be proven
without tokenizing all of it, and time and memory must stay bounded by what truncation keeps.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from tokenizers import Tokenizer

from .errors import TextTooLongError

# Letters and symbols that still join a neighbour: grapheme cluster Prepend, SpacingMark and
# Extend characters outside the mark categories, regional indicators, emoji skin tones, Hangul
# jamo (alone or after NFKC: compatibility, halfwidth and circled forms), and Metaspace's `▁`,
# which splits a pre-token. Marks, format and control characters are left out by category.
_JOINERS = re.compile(
    "[\u0d4e\u0e33\u0eb3\u1100-\u11ff\u2581\u3130-\u318f\u3260-\u327f\ua960-\ua97f\ud7b0-\ud7ff"
    "\uff9e\uff9f\uffa0-\uffdc\U000111c2\U000111c3\U0001193f\U00011941\U00011a3a\U00011a84-\U00011a89"
    "\U00011d46\U00011f02\U000113d1\U0001f1e6-\U0001f1ff\U0001f3fb-\U0001f3ff]"
)
# Where rule 1 looks for boundaries: whitespace, and the CJK ideographs BERT's normalizer spaces out,
# after two non-spaces. Each candidate is then checked with the tokenizer's own normalizer.
_CANDIDATES = re.compile(r"(?<=\S\S)[\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_ASCII_RUN = re.compile("[0-9A-Za-z]*")

_CONTEXT_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Precompiled"}
_LOCAL_NORMALIZERS = {"Lowercase", "BertNormalizer", "StripAccents", "Strip", "Prepend", "Nmt", "Replace"}
_SPACE_RUNS = ({"Regex": " {2,}"}, {"Regex": " +"})
_SPLITTERS = {"Metaspace", "WhitespaceSplit", "Whitespace", "BertPreTokenizer", "ByteLevel"}  # split at spaces
_CLASS_SPLITTERS = {"Punctuation", "Digits"}
_MODELS = {"Unigram", "WordPiece", "BPE", "WordLevel"}

# The first bound is this many characters per kept token; it doubles until a rule applies.
_CHARS_PER_TOKEN = 8
# Texts are tokenized whole (no rule applies, or no cutter) up to this many characters per token of
# `max_seq_length`: 65,536 characters for 64 tokens, a tenth of a second and a few MB.
WHOLE_CHARS_PER_TOKEN = 1024


def whole_limit(max_seq_length: int) -> int:
    """The longest text, in characters, that is tokenized whole when it cannot be cut."""
    return WHOLE_CHARS_PER_TOKEN * max_seq_length


def too_long(text: str, max_seq_length: int, why: str) -> TextTooLongError:
    """The error for a text past `whole_limit` that cannot be cut; `why` says what stopped the cut."""
    return TextTooLongError(
        f"a text of {len(text):,} characters cannot be embedded: {why}, and texts that cannot be cut are "
        f"tokenized whole only up to {whole_limit(max_seq_length):,} characters. Only its first "
        f"{max_seq_length} tokens would count: shorten it (e.g. to its first {whole_limit(max_seq_length):,} "
        "characters).")


class PrefixCutter:
    """Shortens texts that are longer than `short` characters; see the module docstring."""

    def __init__(self, tokenizer: Tokenizer, max_seq_length: int, chars: "_Chars", unigram: bool,
                 word_limit: int | None, added: list[str]) -> None:
        self._tokenizer = tokenizer  # truncating at max_seq_length; never changed here
        self._max_seq_length = max_seq_length
        self._keep = max_seq_length - tokenizer.num_special_tokens_to_add(False)
        self.short = _CHARS_PER_TOKEN * max_seq_length
        self.whole_limit = whole_limit(max_seq_length)
        self._chars = chars
        self._unigram = unigram  # rule 2 applies
        self._piece_chars: int | None = None  # the longest Unigram piece, read when rule 2 first runs
        self._word_limit = word_limit  # rule 3: WordPiece's max_input_chars_per_word
        self._long_run = re.compile(f"[0-9A-Za-z]{{{word_limit + 2},}}") if word_limit is not None else None
        self._added_chars = {c for token in added for c in token[:1] + chars.normalized(token[:1])}
        self._added_length = max((len(token) for token in added), default=0)

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, max_seq_length: int) -> "PrefixCutter | None":
        """A cutter for `tokenizer` (configured to truncate at `max_seq_length`), or None when one of
        its stages is not known to be local (then texts must be tokenized whole)."""
        if max_seq_length - tokenizer.num_special_tokens_to_add(False) < 1:
            return None
        described = _flatten(describe(tokenizer.normalizer), "normalizers")
        pre = _flatten(describe(tokenizer.pre_tokenizer), "pretokenizers")
        model = type(tokenizer.model).__name__
        if not (_normalizers_ok(described) and _pre_tokenizers_ok(pre) and model in _MODELS
                and getattr(tokenizer.model, "dropout", None) is None):
            return None
        # Strip and Prepend act on the ends of a text only; per character they would mislead.
        per_char = build_normalizer([d for d in described if d["type"] not in ("Strip", "Prepend")])
        types = {p["type"] for p in pre}
        spaces_dropped = (types <= {"BertPreTokenizer", "WhitespaceSplit", "Whitespace", "Punctuation", "Digits"}
                          and all(d["type"] != "Replace" for d in described))
        added_tokens = list(tokenizer.get_added_tokens_decoder().values())
        # A `single_word` added token looks at the character after it: only whitespace is then a
        # boundary both when it follows and when the text ends there.
        chars = _Chars(per_char.normalize_str, spaces_dropped,
                       whitespace_only=any(token.single_word for token in added_tokens))
        added = [token.content for token in added_tokens]
        # No added token may span a boundary: none may hold a character that normalizes to a space.
        if any(c.isspace() or c == "\u2581" or " " in chars.normalized(c) for token in added for c in token):
            return None
        unigram = model == "Unigram" and types <= {"Metaspace", "WhitespaceSplit"}
        word_limit = None
        ascii_alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        if (model == "WordPiece" and types <= {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Punctuation"}
                and all(len(chars.normalized(c)) == 1 and chars.normalized(c) in ascii_alnum for c in ascii_alnum)):
            word_limit = tokenizer.model.max_input_chars_per_word
        return cls(tokenizer, max_seq_length, chars, unigram, word_limit, added)

    def cut(self, text: str) -> str:
        """`text` itself when short, else a shorter text with the same first `keep` tokens. Raises
        `TextTooLongError` for a text past `whole_limit` characters that no rule can cut."""
        bound, scanned = self.short, 2  # boundaries before `scanned` gave too few tokens
        while bound < len(text):
            if self._long_run is not None:
                shorter = self._shorten_words(text, bound)
                if shorter is not text:
                    text, scanned = shorter, 2
                    continue
            prefix = self._boundary_cut(text, scanned, bound)
            if prefix is None and self._unigram:
                prefix = self._unigram_cut(text, bound)
            if prefix is not None:
                return prefix
            if bound >= self.whole_limit:
                raise too_long(text, self._max_seq_length, f"no cut in its first {bound:,} characters provably "
                               "keeps its first tokens (it holds a very long word, or a long run of marks or of "
                               "characters the vocabulary lacks)")
            scanned, bound = bound + 1, 2 * bound
        return text

    def _full(self, prefix: str) -> bool:
        """Whether `prefix` has at least `keep` tokens (its truncation is full)."""
        return len(self._tokenizer.encode(prefix).ids) == self._max_seq_length

    def _boundary_cut(self, text: str, start: int, bound: int) -> str | None:
        """Rule 1: the prefix before the last clean boundary in [start, bound], if it is full."""
        chars = self._chars
        end, width = bound + 1, 64
        while end > start:  # look right to left, in growing windows: the last boundary is usually near
            begin = max(start, end - width)
            best = None
            for match in _CANDIDATES.finditer(text, begin, end):
                j = match.start()
                after = text[j + 1] if j + 1 < len(text) else " "
                # T[j-1] and T[j] each form their own grapheme cluster and composition, so they
                # normalize as they do alone; T[j]'s ends before T[j+1].
                if (chars.boundary(text[j]) and chars.ends_cut(text[j - 1]) and chars.plain(text[j - 2])
                        and (chars.plain(after) or (after.isspace() and text[j:j + 2] != "\r\n"))):
                    best = j
            if best is not None:
                prefix = text[:best]
                return prefix if self._full(prefix) else None
            end, width = begin, 8 * width
        return None

    def _unigram_cut(self, text: str, bound: int) -> str | None:
        """Rule 2: `text[:start]` when every cut in the window [start, bound) gives the same full
        truncation, whose last kept token ends at or before `start`."""
        if self._piece_chars is None:  # reading a 250,000-piece vocabulary takes a while: only when needed
            self._piece_chars = max(len(piece) for piece in self._tokenizer.get_vocab())
        chars, width = self._chars, self._piece_chars
        start = bound - width
        if start < 2:
            return None
        if not all(chars.solid(c) and len(chars.normalized(c)) == 1 for c in text[start - 2:bound]):
            return None
        # No added token may match across the window (it would split the pre-token only in T).
        near = text[max(0, start - self._added_length):bound + self._added_length]
        if any(c in self._added_chars or not self._added_chars.isdisjoint(chars.normalized(c)) for c in near):
            return None
        first = self._tokenizer.encode(text[:start])
        if len(first.ids) != self._max_seq_length:  # too few tokens: fail before tokenizing the window
            return None
        encodings = self._tokenizer.encode_batch([text[:j] for j in range(start + 1, bound)])
        if any(e.ids != first.ids for e in encodings):
            return None
        encodings.append(first)
        last = max(i for i, special in enumerate(first.special_tokens_mask) if not special)
        return text[:start] if all(e.offsets[last][1] <= start for e in encodings) else None

    def _shorten_words(self, text: str, bound: int) -> str:
        """Rule 3: every ASCII run longer than `word_limit + 1` that starts before `bound`, cut to that
        length (its word is one unknown token either way); `text` itself when there is none."""
        keep = self._word_limit + 1
        pieces, position = [], 0
        for match in self._long_run.finditer(text, 0, bound):
            end = _ASCII_RUN.match(text, match.end()).end()  # the run may go on past `bound`
            pieces += [text[position:match.start() + keep]]
            position = end
        if not pieces:
            return text
        return "".join(pieces) + text[position:]


class _Chars:
    """Per-character facts under a tokenizer's normalizer (without Strip and Prepend), cached."""

    def __init__(self, normalize: Callable[[str], str], spaces_dropped: bool, whitespace_only: bool) -> None:
        self._normalize = normalize
        self._spaces_dropped = spaces_dropped  # pre-tokenizers drop spaces; nothing collapses them
        self._whitespace_only = whitespace_only  # only whitespace may be a boundary
        self._normalized: dict[str, str] = {}
        self._solid: dict[str, bool] = {}
        self._ends_cut: dict[str, bool] = {}
        self._plain: dict[str, bool] = {}

    def plain(self, c: str) -> bool:
        """`_plain`, cached."""
        if c not in self._plain:
            self._plain[c] = _plain(c)
        return self._plain[c]

    def normalized(self, c: str) -> str:
        if c not in self._normalized:
            self._normalized[c] = self._normalize(c)
        return self._normalized[c]

    def solid(self, c: str) -> bool:
        """Never joins a neighbour's grapheme cluster, composition or pre-token: a letter, digit,
        punctuation or symbol (not a joiner) that normalizes to such characters, marks after the first
        allowed, and to no space."""
        if c not in self._solid:
            n = self.normalized(c)
            self._solid[c] = (_plain(c) and n != "" and _plain(n[0])
                              and all(_plain(x) or unicodedata.category(x)[0] == "M" for x in n))
        return self._solid[c]

    def ends_cut(self, c: str) -> bool:
        """Can be the last character before a rule-1 cut: a plain character that normalizes to plain
        characters, marks and spaces, not starting with a mark, and ending with a space only when
        the pre-tokenizers drop spaces (BERT's spaced-out CJK ideographs)."""
        if c not in self._ends_cut:
            n = self.normalized(c)
            self._ends_cut[c] = (_plain(c) and n != "" and (n[0] == " " or _plain(n[0]))
                                 and all(x == " " or _plain(x) or unicodedata.category(x)[0] == "M" for x in n)
                                 and (n[-1] != " " or self._spaces_dropped))
        return self._ends_cut[c]

    def boundary(self, c: str) -> bool:
        """Starts a new pre-token in every accepted pre-tokenizer: it normalizes to text that starts with
        a space, and is whitespace or a plain character (its grapheme cluster starts with it)."""
        return (c.isspace() or (self.plain(c) and not self._whitespace_only)) and self.normalized(c)[:1] == " "


def _plain(c: str) -> bool:
    return unicodedata.category(c)[0] in "LNPS" and not _JOINERS.match(c)


def describe(stage: Any) -> dict | None:
    """A normalizer's or pre-tokenizer's JSON description (None for none)."""
    return json.loads(stage.__getstate__()) if stage is not None else None


def build_normalizer(parts: list[dict]) -> Any:
    """A normalizer running the described `parts` in order. Built through a tokenizer's JSON, since
    older `tokenizers` (0.20) cannot index or iterate a normalizer `Sequence`."""
    data = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "pre_tokenizer": None,
            "normalizer": {"type": "Sequence", "normalizers": parts}, "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": {}, "unk_token": "[UNK]"}}
    return Tokenizer.from_str(json.dumps(data)).normalizer


def _flatten(description: dict | None, key: str) -> list[dict]:
    """The parts of a (possibly nested) Sequence description, in order; `key` names its list."""
    if description is None:
        return []
    if description["type"] == "Sequence":
        return [part for child in description[key] for part in _flatten(child, key)]
    return [description]


def _normalizers_ok(described: list[dict]) -> bool:
    if sum(d["type"] in _CONTEXT_NORMALIZERS for d in described) > 1:
        return False
    for d in described:
        if d["type"] not in _CONTEXT_NORMALIZERS | _LOCAL_NORMALIZERS:
            return False
        if d["type"] == "Replace" and (d["pattern"] not in _SPACE_RUNS or d["content"] != " "):
            return False
    return True


def _pre_tokenizers_ok(pre: list[dict]) -> bool:
    types = [p["type"] for p in pre]
    if not types or not set(types) <= _SPLITTERS | _CLASS_SPLITTERS or not set(types) & _SPLITTERS:
        return False
    return all(p.get("split", True) for p in pre if p["type"] == "Metaspace") and all(
        p.get("use_regex", True) for p in pre if p["type"] == "ByteLevel")
