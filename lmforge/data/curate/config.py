"""Curation settings: ``CurateConfig`` and its sections (input, normalisation, exact and near
dedup, and one section per quality rule, with the Gopher values noted beside ours).

Why each default differs from Gopher, and what each rule measures: see ``quality``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmforge.config import Section
from lmforge.errors import ConfigError


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
    """Each rule has its own thresholds and ``enabled``; see ``lmforge.data.curate.quality``."""

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
