"""Quality filters in the style of the Gopher rules (Rae et al. 2021, appendix A.1.1):

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
"""

from __future__ import annotations

import collections
import functools
import re
import string

from lmforge.data.curate.config import (
    AlphaWordsRule,
    BulletLinesRule,
    DigitFractionRule,
    DuplicateLinesRule,
    DuplicateNgramsRule,
    DuplicateParagraphsRule,
    EllipsisLinesRule,
    LinePunctuationRule,
    MeanWordLengthRule,
    QualityConfig,
    StopWordsRule,
    SymbolRatioRule,
    TopNgramsRule,
    WordCountRule,
)

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
