"""What a stage's artifacts say, shared by its headline and its section: a classifier's held-out
metrics, the classifier runs, a midtrain's bpb per domain, SFT's scored answers."""

from __future__ import annotations

from lmforge.report.context import Context, Run
from lmforge.report.format import get_in, is_number
from lmforge.stages.summaries import ClassifierSummary


def classifier_metrics(s: dict) -> tuple[dict, str]:
    """A classifier's held-out metrics and their split (stages/summaries.py decides which)."""
    return ClassifierSummary.lenient(s).held_out()


def classifier_runs(ctx: Context) -> list[Run]:
    runs = ctx.of("baseline-tfidf", "classify", "quantize")
    return [r for r in runs if is_number(classifier_metrics(r.summary)[0].get("macro_f1"))]


def midtrain_domains(s: dict) -> list[tuple[str, float, float]]:
    """(data, val bpb before, after) of a midtrain: the starting data, then each new domain."""
    b, a, out = s.get("before") or {}, s.get("after") or {}, []
    for k, v in a.items():
        name = k.removeprefix("val_bpb_")
        same = v == a.get("val_bpb_init") and b.get(k) == b.get("val_bpb_init")
        if name != k and (name == "init" or not same):  # a bpb, and not the start data renamed
            out.append(("start data" if name == "init" else name, b.get(k), v))
    return out


def read_answers(ctx: Context, r: Run) -> dict:
    """SFT's held-out answers, scored before and after (answers.json), or the after half."""
    a = ctx.json(r.path / "answers.json") if r.path else None
    if isinstance(get_in(a, "before"), dict) and isinstance(get_in(a, "after"), dict):
        return a
    return {"before": {}, "after": r.summary.get("answers") or {}}
