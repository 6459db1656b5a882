"""Curate a corpus: normalise, drop exact and near duplicates, filter by quality, report.

    lmforge data curate data/default --out data/curated --near-dup 0.8 --report runs/demo/curation

Steps, in this order (each document is removed by the first step that rejects it, so every
step's documents in = documents out + documents removed):

1. **read** every file of the input (txt / jsonl / parquet / csv, via ``lmforge.data.sources``).
   A document longer than ``input.max_chars`` is truncated or skipped (a .txt file is read only
   that far); an unreadable file (e.g. corrupt parquet) stops the run or is skipped and listed.
2. **normalise**: Unicode NFC (or NFKC, which also folds compatibility characters such as
   ligatures and full-width forms) and tidy whitespace (line endings, control and zero-width
   characters, trailing spaces, runs of blank lines).
3. **exact dedup** on a 64-bit BLAKE2b hash of the normalised text, lower-cased and
   whitespace-collapsed; the first copy in input order is kept.
4. **quality filters** in the style of the Gopher rules (Rae et al. 2021, appendix A.1.1):

   ================================  ===============================  ==========================
   rule (config key)                 Gopher removes a document when    our default
   ================================  ===============================  ==========================
   word_count                        < 50 or > 100,000 words           < 3 or > 100,000 words
   mean_word_length                  mean outside [3, 10] chars        same, docs >= 20 words
   symbol_ratio                      '#' or '...' per word > 0.1       same, docs >= 20 words
   bullet_lines                      > 90% of lines start with bullet  same, docs >= 20 words
   ellipsis_lines                    > 30% of lines end with '...'     same, docs >= 20 words
   alpha_words                       < 80% of words have a letter      same, docs >= 20 words
   stop_words                        < 2 of: the be to of and that     same, docs >= 50 words
                                     have with
   duplicate_lines                   dup lines > 30% or their chars    same, docs >= 20 words
                                     > 20%
   duplicate_paragraphs              same, for paragraphs              same, docs >= 20 words
   top_ngrams                        top n-gram chars > 20/18/16%      same, docs >= 50 words
                                     for n = 2/3/4
   duplicate_ngrams                  chars in repeated n-grams > 15,   same, docs >= 50 words
                                     14, 13, 12, 11, 10% (n = 5..10)
   digit_fraction (not Gopher)       --                                > 25% digits, >= 20 words
   line_punctuation (FineWeb)        --                                off; < 12% of lines end
                                                                       in . ! ? etc.
   ================================  ===============================  ==========================

   Gopher judged web pages of at least 50 words. The default corpus is mostly dictionary glosses
   and one-liners of 5-30 words ("truck traffic (noun): trucks coming and going."), on which a
   ratio over a handful of words is noise: with Gopher's settings the stop-word rule alone would
   remove 43-47% of WordNet, GCIDE and the fortunes, and the top-n-gram rule 3-7%. So every
   ratio rule judges only documents of at least its own ``min_words`` (20, or 50 for the rules
   that need many words to mean anything); ``min_words: 0`` gives Gopher's behaviour. Words are
   whitespace tokens with surrounding punctuation stripped; n-gram rules use lower-cased words;
   only an n-gram that occurs twice or more can be a "top n-gram"; a repeated n-gram's
   characters count from its second occurrence on (non-overlapping, left to right, as
   datatrove's implementation does). The repetition rules keep Gopher's thresholds although
   they remove about 6% of KJV chapters (Numbers 7, Psalm 136: repetition by design), because
   that is what they are for; ``quality.duplicate_ngrams.enabled: false`` keeps them.

5. **near dedup** with MinHash + LSH over word n-gram shingles (default 5-grams of ``\\w+``
   words, lower-cased; a document shorter than n words is one shingle):

   - MinHash (Broder 1997): for a random permutation pi of the hash space,
     P[min pi(A) = min pi(B)] = |A n B| / |A u B| = J(A, B). With ``num_perm`` = k permutations
     the fraction of equal minima estimates J with standard error sqrt(J (1 - J) / k).
     A shingle's 32-bit hash x is pre-mixed by the MurmurHash3 finalizer and permuted by
     pi_i(x) = (a_i x + b_i) mod 2^32, a_i odd -- datasketch's default "affine32" scheme with the
     same seeded a, b (so given the same shingle hashes our signatures equal datasketch's).
     Shingles are hashed by combining 64-bit BLAKE2b word hashes (sum_j w_j c_j mod 2^64 with
     odd c_j, then a 64-bit finalizer), vectorised with numpy; datasketch hashes each shingle
     string with SHA-1 in Python.
   - LSH (Indyk & Motwani 1998; Leskovec et al., Mining of Massive Datasets ch. 3): split the
     signature into b bands of r rows; two documents are candidates when any band is identical,
     with probability P(s) = 1 - (1 - s^r)^b for Jaccard s. b and r minimise
     w_fp * int_0^t P(s) ds + w_fn * int_t^1 (1 - P(s)) ds over b * r <= k, exactly as
     datasketch's ``_optimal_param`` (t = 0.8, k = 128 -> b = 9, r = 13).
   - Candidates are verified by default: a pair is a duplicate only if its estimated Jaccard is
     >= the threshold (datasketch's MinHashLSH does not verify; ``near_dedup.verify: false``
     behaves like it). Buckets of more than 64 documents are verified against their first
     member only, to keep the pair count linear.
   - Only documents that survived exact dedup and the quality filters are compared. Clusters
     are the connected components of the duplicate pairs (what union-find computes; here
     scipy.sparse.csgraph). Each cluster keeps one document: the longest (in characters after
     normalisation), then the first in input order.

Outputs: parquet shards with ``text`` and ``source`` columns plus ``stats.json``, exactly like
``data/default`` (see ``corpora.build_default_corpus``), written atomically; and, if asked, a
report directory: ``curation.json``, ``curation.md``, ``removed_examples.json`` and
``near_dup_clusters.png``.

Memory stays bounded: documents stream through in batches, scored in parallel processes;
what is kept per document is a few numbers and its 64-bit exact-dedup hash, and the MinHash
signatures (4 * num_perm bytes each) go to a temporary file. The kept documents are written in
a second pass over the input. A .jsonl / .parquet / .csv row is loaded whole by its reader, so
max_chars bounds what is processed, not what the reader allocates.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import os
import re
import string
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from lmforge.config import Section
from lmforge.data.sources import iter_file, list_files
from lmforge.errors import ConfigError, DataError
from lmforge.utils import atomic_write_text, staging_dir, write_json

# --- config ------------------------------------------------------------------------------


class InputConfig(Section):
    text_column: str = "text"
    # An unreadable file (corrupt parquet, bad UTF-8, bad JSON): stop, or skip the rest of it
    # and list it in the report.
    on_error: Literal["stop", "skip"] = "stop"
    # Longer documents are truncated to max_chars or skipped; a .txt file is read only this far.
    max_chars: int = Field(1_000_000, gt=0)
    too_long: Literal["truncate", "skip"] = "truncate"


class NormalizeConfig(Section):
    # NFC composes characters without changing them; NFKC also folds compatibility forms
    # (ligatures, full-width letters, superscripts), which can change meaning (x² -> x2).
    unicode: Literal["NFC", "NFKC", "none"] = "NFC"
    # tidy: unify line endings, drop control and zero-width characters, turn exotic spaces into
    # spaces, strip trailing spaces and blank lines around the text, squeeze 3+ newlines to 2.
    # collapse: the same invisible characters dropped, then every whitespace run becomes one
    # space (line structure is lost). keep: nothing.
    whitespace: Literal["tidy", "collapse", "keep"] = "tidy"


class ExactDedupConfig(Section):
    enabled: bool = True


class NearDedupConfig(Section):
    enabled: bool = True
    threshold: float = 0.8  # Jaccard similarity of shingle sets, in (0, 1]
    num_perm: int = Field(128, ge=2)
    ngram: int = Field(5, ge=1)  # words per shingle
    seed: int = 1  # of the permutations; datasketch's default
    verify: bool = True  # keep only candidate pairs whose estimated Jaccard >= threshold
    # Weights of the false-positive and false-negative areas when choosing bands x rows.
    false_positive_weight: float = Field(0.5, ge=0)
    false_negative_weight: float = Field(0.5, ge=0)

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, v: float) -> float:
        # ConfigError rather than ValueError so the message reaches the user as written, both
        # from a YAML recipe and from CurateConfig(...) in Python.
        if not 0.0 < v <= 1.0:  # also rejects NaN
            raise ConfigError(
                f"near_dedup.threshold must be a Jaccard similarity in (0, 1], got {v}. "
                "0.8 is usual; to turn near-dedup off set near_dedup.enabled=false"
            )
        return v

    @model_validator(mode="after")
    def _weights(self) -> NearDedupConfig:
        if self.false_positive_weight + self.false_negative_weight <= 0:
            raise ConfigError(
                "near_dedup false_positive_weight + false_negative_weight must be > 0"
            )
        return self


class WordCountRule(Section):
    enabled: bool = True
    min_words: int = Field(3, ge=0)  # Gopher: 50. Glosses and one-line fortunes are short.
    max_words: int = Field(100_000, ge=1)  # Gopher: 100,000


class MeanWordLengthRule(Section):
    enabled: bool = True
    min_words: int = Field(20, ge=0)  # judge only documents this long (Gopher: 50, implicitly)
    min_length: float = 3.0  # Gopher: 3
    max_length: float = 10.0  # Gopher: 10


class SymbolRatioRule(Section):
    enabled: bool = True
    min_words: int = Field(20, ge=0)
    max_hash_per_word: float = 0.1  # Gopher: 0.1
    max_ellipsis_per_word: float = 0.1  # Gopher: 0.1


class BulletLinesRule(Section):
    enabled: bool = True
    min_words: int = Field(20, ge=0)
    max_fraction: float = 0.9  # Gopher: 0.9


class EllipsisLinesRule(Section):
    enabled: bool = True
    min_words: int = Field(20, ge=0)
    max_fraction: float = 0.3  # Gopher: 0.3


class AlphaWordsRule(Section):
    enabled: bool = True
    min_words: int = Field(20, ge=0)
    min_fraction: float = 0.8  # Gopher: 0.8


GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


class StopWordsRule(Section):
    enabled: bool = True
    # A one-line gloss often has none ("red (adjective): colored red"), so only long documents.
    min_words: int = Field(50, ge=0)
    min_count: int = Field(2, ge=0)  # Gopher: 2 distinct words of the list
    words: list[str] = Field(default_factory=lambda: list(GOPHER_STOP_WORDS))


class DigitFractionRule(Section):
    enabled: bool = True
    min_words: int = Field(20, ge=0)
    max_fraction: float = 0.25  # of non-space characters; not a Gopher rule


class LinePunctuationRule(Section):
    # FineWeb's rule (Penedo et al. 2024). Off by default: verse, code and KJV chapter titles
    # end lines without punctuation, and on the default corpus it mostly hits legitimate text.
    enabled: bool = False
    min_words: int = Field(20, ge=0)
    min_fraction: float = 0.12  # FineWeb: 0.12


class DuplicateLinesRule(Section):
    enabled: bool = True
    min_words: int = Field(20, ge=0)
    max_fraction: float = 0.3  # of lines; Gopher: 0.3
    max_char_fraction: float = 0.2  # of characters; Gopher: 0.2


class DuplicateParagraphsRule(Section):
    enabled: bool = True
    min_words: int = Field(20, ge=0)
    max_fraction: float = 0.3  # Gopher: 0.3
    max_char_fraction: float = 0.2  # Gopher: 0.2


class TopNgramsRule(Section):
    enabled: bool = True
    min_words: int = Field(50, ge=0)
    max_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )  # Gopher


class DuplicateNgramsRule(Section):
    enabled: bool = True
    min_words: int = Field(50, ge=0)
    max_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )  # Gopher


class QualityConfig(Section):
    """Each rule has its own thresholds and ``enabled``; see the module docstring."""

    word_count: WordCountRule = Field(default_factory=WordCountRule)
    mean_word_length: MeanWordLengthRule = Field(default_factory=MeanWordLengthRule)
    symbol_ratio: SymbolRatioRule = Field(default_factory=SymbolRatioRule)
    bullet_lines: BulletLinesRule = Field(default_factory=BulletLinesRule)
    ellipsis_lines: EllipsisLinesRule = Field(default_factory=EllipsisLinesRule)
    alpha_words: AlphaWordsRule = Field(default_factory=AlphaWordsRule)
    stop_words: StopWordsRule = Field(default_factory=StopWordsRule)
    digit_fraction: DigitFractionRule = Field(default_factory=DigitFractionRule)
    line_punctuation: LinePunctuationRule = Field(default_factory=LinePunctuationRule)
    duplicate_lines: DuplicateLinesRule = Field(default_factory=DuplicateLinesRule)
    duplicate_paragraphs: DuplicateParagraphsRule = Field(default_factory=DuplicateParagraphsRule)
    top_ngrams: TopNgramsRule = Field(default_factory=TopNgramsRule)
    duplicate_ngrams: DuplicateNgramsRule = Field(default_factory=DuplicateNgramsRule)


class CurateConfig(Section):
    input: InputConfig = Field(default_factory=InputConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    shard_docs: int = Field(50_000, gt=0)  # documents per output parquet shard (as data/default)
    batch_docs: int = Field(2048, gt=0)  # documents per unit of parallel work
    examples: int = Field(5, ge=0)  # removed documents shown per step / filter in the report
    example_chars: int = Field(300, gt=0)


# --- normalisation -----------------------------------------------------------------------

# C0/C1 controls except tab and newline, zero-width characters and the BOM.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACES = re.compile(r"[ \t]+(?=\n)")
_BLANK_RUNS = re.compile(r"\n{3,}")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    if cfg.unicode != "none":
        text = unicodedata.normalize(cfg.unicode, text)
    if cfg.whitespace == "tidy":
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _INVISIBLE.sub("", text)
        text = _ODD_SPACES.sub(" ", text)
        text = _TRAILING_SPACES.sub("", text)
        text = _BLANK_RUNS.sub("\n\n", text)
        # Leading indentation of the first line is kept: fortunes indent verse and dialogue.
        text = _LEADING_BLANK_LINES.sub("", text).rstrip()
    elif cfg.whitespace == "collapse":
        text = " ".join(_INVISIBLE.sub("", text).split())
    return text


def exact_key(text: str) -> int:
    """64-bit hash of the text lower-cased with whitespace collapsed: copies that differ only in
    case or spacing are one document."""
    canonical = " ".join(text.lower().split()).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "little")


# --- quality rules -----------------------------------------------------------------------

_PUNCTUATION = string.punctuation + "“”‘’«»…–—·•"
_BULLET = re.compile(r"\s*(?:[•‣◦●○■□▪·]|[-*+](?=\s))")  # "- item", not "-ism" or "-- author"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_LINE_END_PUNCTUATION = (".", "!", "?", "…", '"', "'", "”", "’", ")")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s")


class _Doc:
    """Tokenisations of one document, each computed once and only if a rule asks for it."""

    def __init__(self, text: str):
        self.text = text

    @functools.cached_property
    def tokens(self) -> list[str]:
        return self.text.split()

    @functools.cached_property
    def words(self) -> list[str]:
        stripped = (t.strip(_PUNCTUATION) for t in self.tokens)
        return [w for w in stripped if w]

    @functools.cached_property
    def lower_words(self) -> list[str]:
        return [w.lower() for w in self.words]

    @functools.cached_property
    def word_chars(self) -> int:
        return sum(len(w) for w in self.words)

    @functools.cached_property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.split("\n") if line.strip()]

    @functools.cached_property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in _PARAGRAPH_BREAK.split(self.text) if p.strip()]


def _duplicate_share(items: list[str]) -> tuple[float, float]:
    """(fraction of items equal to an earlier item, fraction of characters in them)."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    total_chars = sum(len(x) for x in items)
    return dup_items / max(len(items), 1), dup_chars / max(total_chars, 1)


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n))))


def _repeated_ngram_chars(words: list[str], n: int) -> int:
    """Characters of n-grams that occur again, counted from the second occurrence on and never
    twice for one word (greedy, left to right, as datatrove's Gopher repetition filter)."""
    seen: set[tuple[str, ...]] = set()
    chars = i = 0
    while i + n <= len(words):
        gram = tuple(words[i : i + n])
        if gram in seen:
            chars += sum(len(w) for w in gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


# Each rule returns None when the document passes, else a short reason for the report.


def _word_count(d: _Doc, c: WordCountRule) -> str | None:
    n = len(d.words)
    if n < c.min_words or n > c.max_words:
        return f"{n} words, outside [{c.min_words}, {c.max_words}]"
    return None


def _mean_word_length(d: _Doc, c: MeanWordLengthRule) -> str | None:
    mean = d.word_chars / max(len(d.words), 1)
    if not c.min_length <= mean <= c.max_length:
        return f"mean word length {mean:.2f}, outside [{c.min_length}, {c.max_length}]"
    return None


def _symbol_ratio(d: _Doc, c: SymbolRatioRule) -> str | None:
    n = max(len(d.words), 1)
    hashes = d.text.count("#") / n
    ellipses = (d.text.count("...") + d.text.count("…")) / n
    if hashes > c.max_hash_per_word:
        return f"{hashes:.3f} '#' per word > {c.max_hash_per_word}"
    if ellipses > c.max_ellipsis_per_word:
        return f"{ellipses:.3f} ellipses per word > {c.max_ellipsis_per_word}"
    return None


def _bullet_lines(d: _Doc, c: BulletLinesRule) -> str | None:
    share = sum(bool(_BULLET.match(x)) for x in d.lines) / max(len(d.lines), 1)
    if share > c.max_fraction:
        return f"{share:.2f} of lines start with a bullet > {c.max_fraction}"
    return None


def _ellipsis_lines(d: _Doc, c: EllipsisLinesRule) -> str | None:
    share = sum(x.endswith(("...", "…")) for x in d.lines) / max(len(d.lines), 1)
    if share > c.max_fraction:
        return f"{share:.2f} of lines end with an ellipsis > {c.max_fraction}"
    return None


def _alpha_words(d: _Doc, c: AlphaWordsRule) -> str | None:
    share = sum(1 for t in d.tokens if _LETTER.search(t)) / max(len(d.tokens), 1)
    if share < c.min_fraction:
        return f"{share:.2f} of words have a letter < {c.min_fraction}"
    return None


def _stop_words(d: _Doc, c: StopWordsRule) -> str | None:
    found = len(set(c.words).intersection(d.lower_words))
    if found < c.min_count:
        return f"{found} distinct stop words < {c.min_count}"
    return None


def _digit_fraction(d: _Doc, c: DigitFractionRule) -> str | None:
    visible = len(d.text) - len(_SPACE.findall(d.text))
    share = len(_DIGIT.findall(d.text)) / max(visible, 1)
    if share > c.max_fraction:
        return f"{share:.2f} of characters are digits > {c.max_fraction}"
    return None


def _line_punctuation(d: _Doc, c: LinePunctuationRule) -> str | None:
    share = sum(x.endswith(_LINE_END_PUNCTUATION) for x in d.lines) / max(len(d.lines), 1)
    if share < c.min_fraction:
        return f"{share:.2f} of lines end in punctuation < {c.min_fraction}"
    return None


def _duplicate_lines(d: _Doc, c: DuplicateLinesRule) -> str | None:
    share, char_share = _duplicate_share(d.lines)
    if share > c.max_fraction or char_share > c.max_char_fraction:
        return f"duplicate lines {share:.2f}, their characters {char_share:.2f}"
    return None


def _duplicate_paragraphs(d: _Doc, c: DuplicateParagraphsRule) -> str | None:
    share, char_share = _duplicate_share(d.paragraphs)
    if share > c.max_fraction or char_share > c.max_char_fraction:
        return f"duplicate paragraphs {share:.2f}, their characters {char_share:.2f}"
    return None


def _top_ngrams(d: _Doc, c: TopNgramsRule) -> str | None:
    total = max(d.word_chars, 1)
    for n in sorted(c.max_fraction):
        counts = collections.Counter(_ngrams(d.lower_words, n))
        if not counts:
            break
        gram, count = counts.most_common(1)[0]
        if count < 2:
            break  # no n-gram repeats, so no longer one does either
        share = count * sum(len(w) for w in gram) / total
        if share > c.max_fraction[n]:
            return f"top {n}-gram '{' '.join(gram)}' x{count}: {share:.2f} of chars > {c.max_fraction[n]}"
    return None


def _duplicate_ngrams(d: _Doc, c: DuplicateNgramsRule) -> str | None:
    total = max(d.word_chars, 1)
    for n in sorted(c.max_fraction):
        chars = _repeated_ngram_chars(d.lower_words, n)
        if chars == 0:
            break  # a repeated (n+1)-gram contains a repeated n-gram
        share = chars / total
        if share > c.max_fraction[n]:
            return f"repeated {n}-grams: {share:.2f} of chars > {c.max_fraction[n]}"
    return None


RULES = {
    "word_count": _word_count,
    "mean_word_length": _mean_word_length,
    "symbol_ratio": _symbol_ratio,
    "bullet_lines": _bullet_lines,
    "ellipsis_lines": _ellipsis_lines,
    "alpha_words": _alpha_words,
    "stop_words": _stop_words,
    "digit_fraction": _digit_fraction,
    "line_punctuation": _line_punctuation,
    "duplicate_lines": _duplicate_lines,
    "duplicate_paragraphs": _duplicate_paragraphs,
    "top_ngrams": _top_ngrams,
    "duplicate_ngrams": _duplicate_ngrams,
}
assert list(RULES) == list(QualityConfig.model_fields)


def quality_failures(text: str, cfg: QualityConfig) -> dict[str, str]:
    """{rule name: reason} for every enabled rule the text fails, in RULES order."""
    doc = _Doc(text)
    failures = {}
    for name, rule in RULES.items():
        rule_cfg = getattr(cfg, name)
        if not rule_cfg.enabled:
            continue
        # word_count's min_words is its threshold; for the others it says which documents to judge.
        if name != "word_count" and len(doc.words) < rule_cfg.min_words:
            continue
        reason = rule(doc, rule_cfg)
        if reason is not None:
            failures[name] = reason
    return failures


# --- MinHash -----------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_U32 = np.uint32
_U64 = np.uint64


def shingle_words(text: str) -> list[str]:
    """The words shingles are made of: lower-cased ``\\w+`` runs (punctuation ignored)."""
    return _WORD.findall(text.lower())


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, a bijection that spreads every input bit (as datasketch)."""
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


# Odd 64-bit multipliers, one per position in a shingle: sum_j w_j * c_j (mod 2^64) is an
# order-sensitive combination of the word hashes. Fixed, so hashes agree across processes.
_POSITION_MULTIPLIERS = np.random.RandomState(20211208).randint(
    0, 2**63, size=64, dtype=np.uint64
) * _U64(2) + _U64(1)


class MinHasher:
    """Word n-gram shingles -> MinHash signatures, for many documents at once."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        if ngram > len(_POSITION_MULTIPLIERS):
            raise ConfigError(f"near_dedup.ngram must be <= {len(_POSITION_MULTIPLIERS)}")
        self.num_perm, self.ngram = num_perm, ngram
        # datasketch's affine32 permutations, drawn the same way from the same seed.
        gen = np.random.RandomState(seed)
        self.a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * _U32(2) + _U32(1)
        self.b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        self._word_cache: dict[str, int] = {}

    def _word_hashes(self, words: list[str]) -> np.ndarray:
        cache = self._word_cache
        if len(cache) > 2_000_000:  # a vocabulary cache, not a memory leak
            cache.clear()
        for w in set(words).difference(cache):
            cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))

    def shingle_hashes(self, docs_words: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every document's shingles and the document each belongs to, sorted
        by document. A document of fewer than n words (but at least one) is one shingle."""
        n = self.ngram
        lengths = np.array([len(ws) for ws in docs_words], dtype=np.int64)
        words = [w for ws in docs_words for w in ws]
        wh = self._word_hashes(words)
        doc_of_word = np.repeat(np.arange(len(docs_words)), lengths)
        parts_h, parts_doc = [], []
        if len(words) >= n:
            # Shingle starting at word i: sum_j wh[i + j] * c_j, kept if it stays in one document.
            m = len(words) - n + 1
            acc = np.zeros(m, dtype=np.uint64)
            for j in range(n):
                acc += wh[j : j + m] * _POSITION_MULTIPLIERS[j]
            inside = doc_of_word[:m] == doc_of_word[n - 1 :]
            parts_h.append(acc[inside])
            parts_doc.append(doc_of_word[:m][inside])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        short = np.flatnonzero((lengths > 0) & (lengths < n))
        if len(short):
            acc = np.zeros(len(short), dtype=np.uint64)
            for j in range(n - 1):
                has = lengths[short] > j
                acc[has] += wh[starts[short[has]] + j] * _POSITION_MULTIPLIERS[j]
            parts_h.append(acc)
            parts_doc.append(short)
        if not parts_h:
            return np.zeros(0, np.uint32), np.zeros(0, np.int64)
        h, doc = np.concatenate(parts_h), np.concatenate(parts_doc)
        order = np.argsort(doc, kind="stable")
        return (_fmix64(h[order]) >> _U64(32)).astype(np.uint32), doc[order]

    def signatures_of_hashes(
        self, hashes: np.ndarray, doc: np.ndarray, n_docs: int, chunk: int = 1 << 16
    ) -> np.ndarray:
        """(n_docs, num_perm) uint32 MinHash signatures from shingle hashes sorted by ``doc``.
        A document without shingles keeps the all-0xFFFFFFFF signature."""
        sig = np.full((self.num_perm, n_docs), 0xFFFFFFFF, dtype=np.uint32)
        x = _fmix32(hashes.astype(np.uint32))
        a, b = self.a[:, None], self.b[:, None]
        # Chunks of shingles bound the (num_perm, chunk) temporary to 32 MB.
        for s in range(0, len(x), chunk):
            xs, ds = x[s : s + chunk], doc[s : s + chunk]
            permuted = a * xs[None, :] + b  # (num_perm, rows); uint32 wraps: mod 2^32
            seg = np.flatnonzero(np.concatenate([[True], ds[1:] != ds[:-1]]))
            mins = np.minimum.reduceat(permuted, seg, axis=1)  # (num_perm, segments)
            cols = ds[seg]
            sig[:, cols] = np.minimum(sig[:, cols], mins)
        return np.ascontiguousarray(sig.T)

    def signatures(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures (len(texts), num_perm) uint32, has_shingles bool mask)."""
        docs_words = [shingle_words(t) for t in texts]
        hashes, doc = self.shingle_hashes(docs_words)
        has = np.array([len(ws) > 0 for ws in docs_words], dtype=bool)
        return self.signatures_of_hashes(hashes, doc, len(texts)), has


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal minima, row by row: the MinHash estimate of Jaccard similarity."""
    return (np.asarray(sig_a) == np.asarray(sig_b)).mean(axis=-1)


# --- LSH ---------------------------------------------------------------------------------


def _false_positive_area(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)[0]


def _false_negative_area(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)[0]


@functools.lru_cache(maxsize=64)
def optimal_bands(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive + false-negative areas under the
    LSH S-curve; the same grid search and integrals as datasketch's ``_optimal_param``."""
    best, best_err = (0, 0), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = fp_weight * _false_positive_area(threshold, b, r)
            err += fn_weight * _false_negative_area(threshold, b, r)
            if err < best_err:
                best, best_err = (b, r), err
    return best


_ALL_PAIRS_UP_TO = 64  # larger buckets pair every member with the first one only


def candidate_pairs(
    sig: np.ndarray, bands: int, rows: int, all_pairs_up_to: int = _ALL_PAIRS_UP_TO
) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairs (i < j) of rows of ``sig`` that agree on every row of at least one band.

    A bucket is the set of documents with identical band values (compared as bytes, so no hash
    collisions: the same buckets as datasketch's dict keyed by the band's bytes), found by
    sorting rather than a Python dict of 100k+ entries.
    """
    n = len(sig)
    found = []
    for band in range(bands):
        keys = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        keys = keys.view(np.dtype((np.void, 4 * rows))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        in_bucket = counts[inverse] > 1
        members = np.flatnonzero(in_bucket)
        members = members[np.argsort(inverse[members], kind="stable")]  # grouped, index order
        bounds = np.flatnonzero(np.diff(inverse[members])) + 1
        for group in np.split(members, bounds):
            k = len(group)
            if k <= all_pairs_up_to:
                i, j = np.triu_indices(k, 1)
                found.append(np.stack([group[i], group[j]]))
            else:
                found.append(np.stack([np.full(k - 1, group[0]), group[1:]]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.concatenate(found, axis=1).astype(np.int64)
    codes = np.unique(pairs[0] * n + pairs[1])
    return codes // n, codes % n


def verify_pairs(
    sig: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float, chunk: int = 1 << 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs whose estimated Jaccard is >= threshold, and those estimates."""
    keep, est = [], []
    for s in range(0, len(i), chunk):
        e = estimated_jaccard(sig[i[s : s + chunk]], sig[j[s : s + chunk]])
        keep.append(e >= threshold - 1e-9)
        est.append(e)
    if not keep:
        return i, j, np.zeros(0)
    keep_mask, est_all = np.concatenate(keep), np.concatenate(est)
    return i[keep_mask], j[keep_mask], est_all[keep_mask]


def clusters(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cluster label of each of n items: connected components of the pairs (union-find)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def keepers(labels: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Bool mask: the one member kept per cluster, the longest then the first by index."""
    order = np.lexsort((np.arange(len(labels)), -chars, labels))
    first = np.concatenate([[True], labels[order][1:] != labels[order][:-1]])
    keep = np.zeros(len(labels), dtype=bool)
    keep[order[first]] = True
    return keep


# --- reading -----------------------------------------------------------------------------


def _read_txt(file: Path, max_chars: int) -> tuple[str, int]:
    """(text, its full length): only max_chars are held; the rest is counted, not kept."""
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read(max_chars)
            total = len(text)
            while chunk := f.read(1 << 20):
                total += len(chunk)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{file} is not valid UTF-8 ({e.reason} at byte {e.start}); convert it with iconv"
        ) from None
    return text, total


def _file_documents(file: Path, cfg: InputConfig) -> Iterator[tuple[str, str, int]]:
    """(source, text, original length) of each document in one file."""
    if file.suffix.lower() in {".txt", ".md", ".text"}:
        text, total = _read_txt(file, cfg.max_chars)
        yield file.stem, text, total
        return
    for row in iter_file(file, cfg.text_column):
        # A file without a source column is its own source, as a .txt file is.
        source = row.get("source")
        yield (file.stem if source is None else str(source)), row["text"], len(row["text"])


def read_documents(
    inputs: str | os.PathLike, cfg: InputConfig, skipped_files: list[dict] | None = None
) -> Iterator[tuple[str, str, int, str]]:
    """(source, text, original length, note) of every document, in a stable order. note is ""
    or "truncated" / "skipped" for a document over max_chars (its text cut to max_chars)."""
    for file in list_files(inputs):
        n = 0
        try:
            for source, text, total in _file_documents(file, cfg):
                n += 1
                note = ""
                if total > cfg.max_chars:
                    # A skipped document keeps its head too, for the report's examples.
                    note = "truncated" if cfg.too_long == "truncate" else "skipped"
                    text = text[: cfg.max_chars]
                yield source, text, total, note
        except Exception as e:
            # pyarrow raises OSError / ArrowInvalid mid-file for a damaged row group; sources
            # raises DataError for what it can see when opening. Either way: name the file.
            reason = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, (DataError, OSError, ValueError)):
                raise
            if cfg.on_error == "stop":
                raise DataError(
                    f"cannot read {file} (after {n} documents): {reason}. Fix or remove the "
                    "file, or set input.on_error=skip to skip unreadable files"
                ) from None
            if skipped_files is not None:
                skipped_files.append({"file": str(file), "documents_read": n, "error": reason})


# --- scoring (runs in worker processes) --------------------------------------------------

_STATE: dict = {}


def _init_worker(cfg_data: dict) -> None:
    cfg = CurateConfig.model_validate(cfg_data)
    nd = cfg.near_dedup
    _STATE.update(cfg=cfg, hasher=MinHasher(nd.num_perm, nd.ngram, nd.seed))


def _score_batch(texts: list[str]) -> dict:
    """Everything about a batch of raw texts that does not depend on other batches."""
    cfg: CurateConfig = _STATE["cfg"]
    seconds = dict.fromkeys(("normalize", "exact_hash", "quality", "minhash"), 0.0)
    t = time.perf_counter()
    normed = [normalize_text(x, cfg.normalize) for x in texts]
    seconds["normalize"] = time.perf_counter() - t

    t = time.perf_counter()
    keys = [exact_key(x) for x in normed]
    seconds["exact_hash"] = time.perf_counter() - t

    t = time.perf_counter()
    failures = [quality_failures(x, cfg.quality) for x in normed]
    failing = np.array([[name in f for name in RULES] for f in failures], dtype=bool)
    first = [next(iter(f.items())) if f else None for f in failures]
    seconds["quality"] = time.perf_counter() - t

    t = time.perf_counter()
    sigs, has_shingles = None, np.zeros(len(texts), dtype=bool)
    passing = [k for k, f in enumerate(failures) if not f]
    if cfg.near_dedup.enabled and passing:
        sig, has = _STATE["hasher"].signatures([normed[k] for k in passing])
        sigs = sig[has]
        has_shingles[np.array(passing)[has]] = True
    seconds["minhash"] = time.perf_counter() - t
    return {
        "chars": [len(x) for x in normed],
        "changed": sum(a != b for a, b in zip(texts, normed)),
        "keys": keys,
        "failing": failing.reshape(len(texts), len(RULES)),  # (docs, rules)
        "first_failure": first,  # (rule, reason) or None
        "has_shingles": has_shingles,
        "signatures": sigs,  # (docs with has_shingles, num_perm)
        "seconds": seconds,
    }


def _batches(docs: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _scored(batches: Iterator[list[tuple]], workers: int, cfg_data: dict):
    """(batch, score) in input order. A pool of processes only when there are two batches or
    more, and at most 2 batches per worker in flight (Pool.imap would read the whole input
    ahead into its queue)."""
    batches = iter(batches)
    head = [b for b in (next(batches, None), next(batches, None)) if b is not None]
    if workers == 1 or len(head) < 2:
        _init_worker(cfg_data)
        for batch in itertools.chain(head, batches):
            yield batch, _score_batch([d[1] for d in batch])
        return
    import multiprocessing as mp

    # spawn, not fork: the parent holds pyarrow's threads, which fork would not copy.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg_data,)) as pool:
        pending: collections.deque = collections.deque()
        for batch in itertools.chain(head, batches):
            pending.append((batch, pool.apply_async(_score_batch, ([d[1] for d in batch],))))
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


# --- curate ------------------------------------------------------------------------------

KEPT, TOO_LONG, EXACT, QUALITY, NEAR = 0, 1, 2, 3, 4
STEPS = ("too_long", "exact_dedup", "quality", "near_dedup")


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def curate(
    inputs: str | Path,
    out: str | Path,
    cfg: CurateConfig,
    report: str | Path | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Curate the documents under ``inputs`` into parquet shards at ``out`` (atomically), write
    the report directory if ``report`` is given, and return the report's numbers."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    inputs, out = Path(inputs), Path(out)
    # Re-validate: a config built with model_construct or mutated without validation.
    cfg = CurateConfig.model_validate(cfg.model_dump())
    if out.resolve() != inputs.resolve() and inputs.resolve() in out.resolve().parents:
        raise ConfigError(
            f"--out {out} is inside the input {inputs}; a rerun would read its own output. "
            "Write it next to the input instead"
        )
    workers = _default_workers() if workers is None else max(1, int(workers))
    list_files(inputs)  # a missing or empty input fails here, before any work
    nd = cfg.near_dedup
    bands, rows = optimal_bands(
        nd.threshold, nd.num_perm, nd.false_positive_weight, nd.false_negative_weight
    )

    # Pass 1: read, normalise, hash, filter and MinHash every document, in parallel batches;
    # keep a few numbers per document and append the candidates' signatures to a file.
    source_ids: dict[str, int] = {}
    status, source_of, chars_in, chars_norm, first_failure = [], [], [], [], []
    failing_parts: list[np.ndarray] = []
    seen_keys: set[int] = set()
    cand_list: list[int] = []  # document index of each signature row written
    skipped_files: list[dict] = []
    examples: dict[str, list] = collections.defaultdict(list)
    truncated = normalized_changed = 0
    cpu_seconds: collections.Counter = collections.Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.curate-", dir=out.parent) as tmp:
        sig_path = Path(tmp) / "signatures.u32"
        t_pass1 = time.perf_counter()
        bar = tqdm(desc="curate: score", unit=" docs", disable=not progress, dynamic_ncols=True)
        docs = read_documents(inputs, cfg.input, skipped_files)
        batches = _batches(docs, cfg.batch_docs)
        with open(sig_path, "wb") as sig_file:
            for batch, score in _scored(batches, workers, cfg.model_dump()):
                sig_rows = iter(score["signatures"] if score["signatures"] is not None else ())
                for k, (source, text, total, note) in enumerate(batch):
                    source_of.append(source_ids.setdefault(source, len(source_ids)))
                    chars_in.append(total)
                    chars_norm.append(score["chars"][k])
                    first_failure.append(-1)
                    key, first = score["keys"][k], score["first_failure"][k]
                    truncated += note == "truncated"
                    if note == "skipped":
                        status.append(TOO_LONG)
                        _add_example(examples, "too_long", cfg, source, text, f"{total:,} chars")
                    elif cfg.exact_dedup.enabled and key in seen_keys:
                        status.append(EXACT)
                        _add_example(examples, "exact_dedup", cfg, source, text, "")
                    elif first is not None:
                        status.append(QUALITY)
                        first_failure[-1] = list(RULES).index(first[0])
                        _add_example(examples, first[0], cfg, source, text, first[1])
                    else:
                        status.append(KEPT)
                    if cfg.exact_dedup.enabled and note != "skipped":
                        seen_keys.add(key)
                    if score["has_shingles"][k]:
                        # Every document that passes the filters has a signature; the ones
                        # that also survived exact dedup are the near-dedup candidates.
                        row = next(sig_rows)
                        if status[-1] == KEPT:
                            sig_file.write(row.tobytes())
                            cand_list.append(len(status) - 1)
                failing_parts.append(score["failing"])
                normalized_changed += score["changed"]
                cpu_seconds.update(score["seconds"])
                bar.update(len(batch))
        bar.close()
        seconds = {"score": time.perf_counter() - t_pass1}

        status_arr = np.array(status, dtype=np.int8)
        chars_norm_arr = np.array(chars_norm, dtype=np.int64)
        n_docs = len(status_arr)
        failing = np.concatenate(failing_parts) if failing_parts else None
        if n_docs == 0:
            where = f"; unreadable files skipped: {skipped_files}" if skipped_files else ""
            raise DataError(f"{inputs} holds no documents{where}")

        # Near dedup over the candidates' signatures.
        t_near = time.perf_counter()
        near = {"bands": bands, "rows": rows, "candidates": 0, "candidate_pairs": 0}
        near["verified_pairs"], near["cluster_sizes"], near_examples = 0, {}, []
        cand = np.array(cand_list, dtype=np.int64)
        if nd.enabled and len(cand) > 1:
            sig = np.memmap(sig_path, dtype=np.uint32, mode="r", shape=(len(cand), nd.num_perm))
            i, j = candidate_pairs(sig, bands, rows)
            near.update(candidates=len(cand), candidate_pairs=len(i))
            if nd.verify:
                i, j, _ = verify_pairs(sig, i, j, nd.threshold)
            near["verified_pairs"] = len(i) if nd.verify else None
            labels = clusters(len(cand), i, j)
            sizes = np.bincount(labels)
            keep = keepers(labels, chars_norm_arr[cand])
            dup = (sizes[labels] > 1) & ~keep
            status_arr[cand[dup]] = NEAR
            size_counts = collections.Counter(sizes[sizes > 1].tolist())
            near["cluster_sizes"] = {int(s): int(c) for s, c in sorted(size_counts.items())}
            near_examples = _near_examples(cand, labels, keep, sig, cfg.examples)
            del sig
        seconds["near_dedup"] = time.perf_counter() - t_near

    # Pass 2: read again and write the kept documents, normalised, as parquet shards.
    t_write = time.perf_counter()
    kept_stats, wanted = _write_output(inputs, out, cfg, status_arr, near_examples, progress)
    seconds["write"] = time.perf_counter() - t_write
    for ex in near_examples:
        for side in ("kept", "removed"):
            source, text = wanted[ex[side]]
            ex[side] = {"source": source, "text": _truncate(text, cfg.example_chars)}
    examples["near_dedup"] = near_examples
    seconds["total"] = time.perf_counter() - t_start

    summary = _summary(
        inputs, out, cfg, status_arr, np.array(source_of), source_ids, np.array(chars_in),
        chars_norm_arr, np.array(first_failure), failing, near, truncated,
        normalized_changed, skipped_files, seconds, dict(cpu_seconds), workers, kept_stats,
    )  # fmt: skip
    if report is not None:
        _write_report(Path(report), summary, examples)
    if summary["documents_out"] == 0:
        steps = ", ".join(f"{s['step']} {s['documents_removed']}" for s in summary["steps"])
        raise DataError(
            f"curation removed all {n_docs} documents of {inputs} ({steps}); nothing was written"
            " to --out. Loosen or disable the filters that removed them (see the report)"
        )
    return summary


def _truncate(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + f"... [{len(text) - n} more chars]"


def _add_example(examples: dict, step: str, cfg: CurateConfig, source, text, why) -> None:
    if len(examples[step]) < cfg.examples:
        entry = {"source": source, "text": _truncate(text, cfg.example_chars)}
        if why:
            entry["why"] = why
        examples[step].append(entry)


def _near_examples(cand, labels, keep, sig, k: int) -> list[dict]:
    """A kept and a removed member of the first k clusters (by the removed one's position)."""
    out, done = [], set()
    keeper_of = {int(labels[x]): x for x in np.flatnonzero(keep)}
    for x in np.flatnonzero(~keep):
        label = int(labels[x])
        if label in done or label not in keeper_of:
            continue
        done.add(label)
        y = keeper_of[label]
        est = float(estimated_jaccard(sig[x], sig[y]))
        out.append({"kept": int(cand[y]), "removed": int(cand[x]), "estimated_jaccard": est})
        if len(out) >= k:
            break
    return out


def _write_output(inputs, out, cfg, status, near_examples, progress):
    """Pass 2: the kept documents, normalised, in input order, as corpus-NNNNN.parquet shards
    (text, source) plus stats.json -- the layout of data/default."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    want = {ex[s] for ex in near_examples for s in ("kept", "removed")}
    wanted: dict[int, tuple[str, str]] = {}
    per_source: dict[str, dict] = {}
    if not (status == KEPT).any():
        return per_source, wanted
    shard: list[tuple[str, str]] = []
    n_shards = 0
    bar = tqdm(desc="curate: write", unit=" docs", disable=not progress, dynamic_ncols=True)
    with staging_dir(out) as tmp:

        def flush():
            nonlocal n_shards
            table = pa.table({"text": [t for t, _ in shard], "source": [s for _, s in shard]})
            pq.write_table(table, tmp / f"corpus-{n_shards:05d}.parquet", compression="zstd")
            n_shards += 1
            shard.clear()

        # The same reader as pass 1, so document k is the same document; skipped files are
        # skipped again (their errors are already recorded).
        docs = read_documents(inputs, cfg.input, skipped_files=None)
        for k, (source, text, _, _) in enumerate(docs):
            bar.update(1)
            if k >= len(status):
                raise DataError(f"{inputs} changed while it was being curated; run again")
            if status[k] != KEPT and k not in want:
                continue
            text = normalize_text(text, cfg.normalize)
            if k in want:
                wanted[k] = (source, text)
            if status[k] != KEPT:
                continue
            s = per_source.setdefault(source, {"documents": 0, "characters": 0, "words": 0})
            s["documents"] += 1
            s["characters"] += len(text)
            s["words"] += len(text.split())
            shard.append((text, source))
            if len(shard) == cfg.shard_docs:
                flush()
        if shard:
            flush()
        bar.close()
        stats = {
            "sources": per_source,
            "total": {
                key: sum(s[key] for s in per_source.values())
                for key in ("documents", "characters", "words")
            },
            "shards": n_shards,
            "curated_from": str(inputs),
            "curation": cfg.model_dump(mode="json"),
        }
        write_json(tmp / "stats.json", stats)
    return per_source, wanted


def _summary(
    inputs, out, cfg, status, source_of, source_ids, chars_in, chars_norm, first_failure,
    failing, near, truncated, normalized_changed, skipped_files, seconds, cpu_seconds,
    workers, kept_stats,
) -> dict:  # fmt: skip
    """curation.json: documents and characters through every step, overall and per source.

    Characters are counted after normalisation, except that a document skipped for its length
    counts at its full length."""
    chars = np.where(status == TOO_LONG, chars_in, chars_norm)
    codes = dict(zip(STEPS, (TOO_LONG, EXACT, QUALITY, NEAR)))
    enabled_rules = [
        (f, name) for f, name in enumerate(RULES) if getattr(cfg.quality, name).enabled
    ]

    def step_rows(mask: np.ndarray) -> list[dict]:
        rows, alive = [], mask.copy()
        for step in STEPS:
            gone = alive & (status == codes[step])
            row = {
                "step": step,
                "documents_in": int(alive.sum()),
                "documents_removed": int(gone.sum()),
                "documents_out": int(alive.sum() - gone.sum()),
                "characters_in": int(chars[alive].sum()),
                "characters_removed": int(chars[gone].sum()),
                "characters_out": int(chars[alive].sum() - chars[gone].sum()),
            }
            if step == "quality":
                # removed: the first rule a document fails; failing: every rule it fails.
                row["filters"] = {
                    name: {
                        "documents_removed": int((gone & (first_failure == f)).sum()),
                        "characters_removed": int(chars[gone & (first_failure == f)].sum()),
                        "documents_failing": int((alive & failing[:, f]).sum()),
                    }
                    for f, name in enabled_rules
                }
            rows.append(row)
            alive &= ~gone
        return rows

    steps = step_rows(np.ones(len(status), dtype=bool))
    per_source = {}
    for sid, name in enumerate(source_ids):
        rows = step_rows(source_of == sid)
        per_source[name] = {
            "documents_in": rows[0]["documents_in"],
            "characters_in": rows[0]["characters_in"],
            "removed": {r["step"]: r["documents_removed"] for r in rows},
            "characters_removed": {r["step"]: r["characters_removed"] for r in rows},
            "removed_by_filter": {
                f: v["documents_removed"] for f, v in rows[2].get("filters", {}).items()
            },
            "documents_out": rows[-1]["documents_out"],
            "characters_out": rows[-1]["characters_out"],
        }
    sizes = near["cluster_sizes"]
    return {
        "input": str(inputs),
        "output": str(out),
        "documents_in": steps[0]["documents_in"],
        "characters_in": steps[0]["characters_in"],
        "documents_out": steps[-1]["documents_out"],
        "characters_out": steps[-1]["characters_out"],
        "files_skipped": skipped_files,
        "normalize": {
            "documents_changed": int(normalized_changed),
            "documents_truncated": int(truncated),
            "characters_read": int(chars_in.sum()),
            "characters_after": int(chars_norm.sum()),
        },
        "steps": steps,
        "near_dedup": {
            **{k: v for k, v in near.items() if k != "cluster_sizes"},
            "threshold": cfg.near_dedup.threshold,
            "clusters": int(sum(sizes.values())),
            "documents_in_clusters": int(sum(s * c for s, c in sizes.items())),
            "cluster_sizes": sizes,
        },
        "sources": per_source,
        "output_stats": kept_stats,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "cpu_seconds_by_step": {k: round(v, 2) for k, v in cpu_seconds.items()},
        "workers": workers,
        "config": cfg.model_dump(mode="json"),
    }


# --- report ------------------------------------------------------------------------------


def _write_report(report: Path, summary: dict, examples: dict) -> None:
    with staging_dir(report) as tmp:
        write_json(tmp / "curation.json", summary)
        write_json(tmp / "removed_examples.json", dict(examples))
        atomic_write_text(tmp / "curation.md", _markdown(summary))
        _plot_clusters(summary["near_dedup"]["cluster_sizes"], tmp / "near_dup_clusters.png")


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def _markdown(s: dict) -> str:
    lines = [
        f"# Curation of {s['input']}",
        "",
        f"{s['documents_in']:,} documents ({s['normalize']['characters_read']:,} characters) in, "
        f"{s['documents_out']:,} ({s['characters_out']:,} characters) out "
        f"({_pct(s['documents_out'], s['documents_in'])} of documents kept) "
        f"in {s['seconds']['total']:.1f} s with {s['workers']} worker(s).",
        "",
        "## Steps",
        "",
        "Each document is removed by the first step that rejects it; characters are counted "
        "after normalisation.",
        "",
        "| step | documents in | removed | out | characters removed |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in s["steps"]:
        lines.append(
            f"| {r['step']} | {r['documents_in']:,} | {r['documents_removed']:,} "
            f"({_pct(r['documents_removed'], r['documents_in'])}) | {r['documents_out']:,} | "
            f"{r['characters_removed']:,} |"
        )
    norm = s["normalize"]
    lines += [
        "",
        f"Normalisation changed {norm['documents_changed']:,} documents "
        f"({norm['characters_read']:,} characters read, {norm['characters_after']:,} after); "
        f"{norm['documents_truncated']:,} were truncated to the length limit.",
    ]
    if s["files_skipped"]:
        lines += ["", "Unreadable files skipped:", ""]
        lines += [f"- {f['file']}: {f['error']}" for f in s["files_skipped"]]
    sources = list(s["sources"])
    quality = next(r for r in s["steps"] if r["step"] == "quality")
    lines += [
        "",
        "## Per source",
        "",
        "| source | in | too long | exact dups | quality | near dups | out | kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in sources:
        p = s["sources"][name]
        rm = p["removed"]
        lines.append(
            f"| {name} | {p['documents_in']:,} | {rm['too_long']:,} | {rm['exact_dedup']:,} | "
            f"{rm['quality']:,} | {rm['near_dedup']:,} | {p['documents_out']:,} | "
            f"{_pct(p['documents_out'], p['documents_in'])} |"
        )
    lines += [
        "",
        "## Quality filters",
        "",
        "Documents removed by each rule (the first rule a document fails), per source; "
        "'failing' counts every document the rule rejects, overlaps included.",
        "",
        "| rule | removed | failing | " + " | ".join(sources) + " |",
        "|---|---:|---:|" + "---:|" * len(sources),
    ]
    for name, f in quality.get("filters", {}).items():
        per = " | ".join(f"{s['sources'][x]['removed_by_filter'].get(name, 0):,}" for x in sources)
        lines.append(
            f"| {name} | {f['documents_removed']:,} | {f['documents_failing']:,} | {per} |"
        )
    nd = s["near_dedup"]
    lines += [
        "",
        "## Near duplicates",
        "",
        f"MinHash {s['config']['near_dedup']['num_perm']} permutations, word "
        f"{s['config']['near_dedup']['ngram']}-gram shingles, Jaccard threshold {nd['threshold']}: "
        f"{nd['bands']} bands x {nd['rows']} rows; {nd['candidates']:,} candidates, "
        f"{nd['candidate_pairs']:,} candidate pairs"
        + (f", {nd['verified_pairs']:,} verified" if nd.get("verified_pairs") is not None else "")
        + f"; {nd['clusters']:,} clusters holding {nd['documents_in_clusters']:,} documents.",
        "",
        "| cluster size | clusters |",
        "|---:|---:|",
    ]
    lines += [f"| {size} | {count:,} |" for size, count in nd["cluster_sizes"].items()]
    lines += [
        "",
        "## Time",
        "",
        "| phase | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in s["seconds"].items()]
    lines += ["", "CPU seconds inside the scoring pass, summed over workers:", ""]
    lines += [f"- {k}: {v}" for k, v in s["cpu_seconds_by_step"].items()]
    return "\n".join(lines) + "\n"


def _plot_clusters(cluster_sizes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if cluster_sizes:
        from matplotlib.ticker import MaxNLocator

        sizes, counts = [int(k) for k in cluster_sizes], list(cluster_sizes.values())
        bars = ax.bar(sizes, counts, width=0.8, color="#4477aa")
        ax.bar_label(bars, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)  # a cluster size seen once still shows a bar
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("documents in the cluster")
        ax.set_ylabel("clusters")
    else:
        ax.text(0.5, 0.5, "no near-duplicate clusters", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Near-duplicate cluster sizes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
