"""Headlines: a stage's summary.json turned into the one line that stands for it, in the Summary
table and in the table `lmforge run` prints at its end (build_report returns them by stage).

A stage's headline reads its summary through the stage's schema (stages/summaries.py), so a
key is spelled where the stage declares it; the data artifacts and analyses (tokenizer,
curation, tradeoff, scaling) are read from their own files. `headline` adds what is not in a
summary (SFT's scored answers, a stage with no artifacts, one that could not be read)."""

from __future__ import annotations

import math
from collections.abc import Callable

from lmforge.report.artifacts import midtrain_domains, read_answers
from lmforge.report.context import Context, Run
from lmforge.report.format import fmt_arrow, fmt_num, fmt_pct, fmt_pct_ci, get_in, ratio
from lmforge.stages.summaries import (
    ClassifierSummary,
    DPOSummary,
    MidtrainSummary,
    PretrainSummary,
    QuantizeSummary,
    RewardSummary,
    Summary,
)

DAMAGED = "could not be read (see the notes above)"


def _tokenizer(s: dict) -> str:
    bpt, vocab = fmt_num(s.get("bytes_per_token_heldout")), fmt_num(s.get("vocab_size"))
    return f"{bpt} bytes/token (held-out), vocab {vocab}"


def _curation(s: dict) -> str:
    kept = fmt_pct(ratio(s.get("documents_out"), s.get("documents_in")))
    return f"{kept} of {fmt_num(s.get('documents_in'))} documents kept"


def _lm(s: PretrainSummary | QuantizeSummary) -> str:
    return f"val bpb {fmt_num(s.val_bpb)}"


def _lm_distill(s: PretrainSummary) -> str:
    return f"{_lm(s)} (teacher {fmt_num(get_in(s.distill, 'teacher_val_bpb'))})"


def _encoder(s: PretrainSummary) -> str:
    return f"masked-token accuracy {fmt_pct(s.val_masked_accuracy)}"


def _midtrain(s: MidtrainSummary) -> str:
    domains = midtrain_domains(s.written())
    return "val bpb " + "; ".join(f"{d} {fmt_arrow(b, a)}" for d, b, a in domains)


def _reward(s: RewardSummary) -> str:
    return f"val accuracy {fmt_arrow(get_in(s.before, 'val_accuracy'), s.val_accuracy, fmt_pct)}"


def _dpo(s: DPOSummary) -> str:
    win = fmt_pct(s.win_rate_over_init) + fmt_pct_ci(s.win_rate_ci95)
    return f"reward accuracy {fmt_pct(s.val_reward_accuracy)}, win rate {win}"


def _classifier(s: ClassifierSummary) -> str:
    m, split = s.held_out()
    return f"macro F1 {fmt_num(m.get('macro_f1'))} ({split})"


def _quantize(s: QuantizeSummary) -> str:
    return f"{_classifier(s)}, {fmt_num(s.checkpoint_mb)} MB"


def _quantize_lm(s: QuantizeSummary) -> str:
    change = s.val_bpb_change if "val_bpb_change" in s.model_fields_set else math.nan
    return f"{_lm(s)} ({change:+.2g}), {fmt_num(s.checkpoint_mb)} MB"


def _sft(ctx: Context, r: Run) -> str:
    """SFT's answer quality is in answers.json, next to its summary."""
    a = read_answers(ctx, r)
    f1 = fmt_arrow(get_in(a, "before.token_f1"), get_in(a, "after.token_f1"))
    return f"val loss {fmt_num(r.typed.val_loss)}; answer token F1 {f1}"


# A stage's run: its summary read through the stage's schema (stages/summaries.py).
STAGE_HEADLINES: dict[str, Callable[[Summary], str]] = {
    "pretrain": _lm,
    "lm-distill": _lm_distill,
    "encoder": _encoder,
    "midtrain": _midtrain,
    "reward": _reward,
    "dpo": _dpo,
    "classify": _classifier,
    "baseline-tfidf": _classifier,
    "quantize": _quantize,
    "quantize-lm": _quantize_lm,
}


# The data artifacts and the analyses, which no stage schema describes: their own JSON files.
def _tradeoff(s: dict) -> str:
    return f"recommended: {s.get('recommended') or 'none within the limits'}"


def _scaling_fit(s: dict) -> str:
    alpha, beta = fmt_num(get_in(s, "approach3.alpha")), fmt_num(get_in(s, "approach3.beta"))
    return f"α {alpha}, β {beta} ({len(s.get('runs') or [])} runs)"


def _scaling_sweep(s: dict) -> str:
    return f"{len(s.get('runs') or [])} runs"


def _data(s: dict) -> str:
    return f"{fmt_num(get_in(s, 'total.documents'))} documents"


def _instructions(s: dict) -> str:
    chats = fmt_num(sum((get_in(s, "counts.train") or {}).values()))
    pairs = fmt_num(sum((get_in(s, "counts.preferences-train") or {}).values()))
    return f"{chats} conversations, {pairs} preference pairs"


def _task(s: dict) -> str:
    return (
        f"{fmt_num(s.get('num_labels'))} labels, {fmt_num(get_in(s, 'rows.train'))} training rows"
    )


ARTIFACT_HEADLINES: dict[str, Callable[[dict], str]] = {
    "tokenizer": _tokenizer,
    "curation": _curation,
    "tradeoff": _tradeoff,
    "scaling-fit": _scaling_fit,
    "scaling-sweep": _scaling_sweep,
    "data": _data,
    "instructions": _instructions,
    "task": _task,
    "damaged": lambda s: DAMAGED,
}


def headline(ctx: Context, r: Run) -> str:
    """The one line for run `r`: "–" when its kind has none or its numbers are not numbers."""
    s, k = r.summary, r.kind
    if not s:  # a stage that has not written its artifacts (yet), or wrote them elsewhere
        if r.kind == "damaged":
            return DAMAGED
        return r.error or ("no artifacts found" if r.path is None else "–")
    try:
        if k == "sft":
            return _sft(ctx, r)
        if k in STAGE_HEADLINES:
            return STAGE_HEADLINES[k](r.typed)
        return ARTIFACT_HEADLINES[k](s) if k in ARTIFACT_HEADLINES else "–"
    except (TypeError, ValueError):  # a number that is not one: the table goes on without it
        return "–"
