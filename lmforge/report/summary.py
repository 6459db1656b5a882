"""The Summary section: a card per stage with the number a reader looks for first, then every
stage with its wall time and headline."""

from __future__ import annotations

from lmforge.report.artifacts import classifier_metrics, classifier_runs, midtrain_domains
from lmforge.report.context import Context, wall_time
from lmforge.report.format import (
    fmt_arrow,
    fmt_duration,
    fmt_num,
    fmt_pct,
    fmt_pct_ci,
    get_in,
    ratio,
)
from lmforge.report.headlines import headline


def _cards(ctx: Context) -> list[tuple[str, str, str]]:
    """The numbers a reader looks for first, one per stage, from the stage's main run."""
    cards, main = [], ctx.main
    if r := main("tokenizer"):
        s, vocab = r.summary, f"held-out text, vocab {fmt_num(r.summary.get('vocab_size'))}"
        cards.append(("tokenizer bytes/token", fmt_num(s.get("bytes_per_token_heldout")), vocab))
    if r := main("curation"):
        s = r.summary
        kept = fmt_pct(ratio(s.get("documents_out"), s.get("documents_in")))
        cards.append(("curation kept", kept, f"of {fmt_num(s.get('documents_in'))} documents"))
    if r := main("pretrain"):
        cards.append(("pre-training val bpb", fmt_num(r.summary.get("val_bpb")), r.name))
    if r := main("encoder"):
        cards.append(
            ("encoder masked accuracy", fmt_pct(r.summary.get("val_masked_accuracy")), r.name)
        )
    if (r := main("midtrain")) and (dom := midtrain_domains(r.summary)):
        name, before, after = dom[-1]  # the new domain when there is one
        cards.append(("mid-training val bpb", fmt_arrow(before, after), f"{r.name}, {name}"))
    if r := main("sft"):
        cards.append(("SFT val loss", fmt_num(r.summary.get("val_loss")), r.name))
    if r := main("reward"):
        s, start = r.summary, fmt_pct(get_in(r.summary, "before.val_accuracy"))
        cards.append(
            ("reward model accuracy", fmt_pct(s.get("val_accuracy")), f"{r.name}, from {start}")
        )
    if r := main("dpo"):
        s, acc = r.summary, fmt_pct(r.summary.get("val_reward_accuracy"))
        win = fmt_pct(s.get("win_rate_over_init")) + fmt_pct_ci(s.get("win_rate_ci95"))
        of = f"{r.name}, n {fmt_num(s.get('win_rate_n'))}, reward accuracy {acc}"
        cards.append(("DPO win rate", win, of))
    if runs := classifier_runs(ctx):
        best = max(runs, key=lambda r: classifier_metrics(r.summary)[0]["macro_f1"])
        m, split = classifier_metrics(best.summary)
        cards.append(("best classifier macro F1", fmt_num(m["macro_f1"]), f"{best.name} ({split})"))
    if (r := main("tradeoff")) and (rec := r.summary.get("recommended")):
        x = next((x for x in r.summary.get("runs") or [] if get_in(x, "run") == rec), {})
        where = f"{fmt_num(x.get('latency_ms_p50'))} ms p50, {fmt_num(x.get('checkpoint_mb'))} MB"
        cards.append(("recommended deployment", rec, where))
    return cards


def summary_section(ctx: Context) -> list:
    pipe = ctx.pipeline is not None
    head = [
        "stage",
        "verb" if pipe else "kind",
        *(["status"] if pipe else []),
        "wall time",
        "headline",
    ]
    rows = [
        [
            r.name,
            r.verb or r.kind,
            *([r.status + (" (cached)" if r.cached else "")] if pipe else []),
            fmt_duration(wall_time(r)),
            headline(ctx, r),
        ]
        for r in ctx.runs
    ]
    if pipe:
        why = (
            "Stages in the order `lmforge run` ran them; a wall time is that of the run that made "
            "the artifact."
        )
    else:
        why = "No pipeline.json: every run directory found, by kind."
    out = [("h2", "summary", "Summary"), ("cards", _cards(ctx)), ("p", why), ("table", head, rows)]
    if ctx.others:  # earlier experiments in the same directory: named, not reported
        others = (
            f"Also under `{ctx.root}`, not stages of this pipeline and left out of this "
            f"report: {', '.join(ctx.others)}."
        )
        out.append(("p", others))
    return out
