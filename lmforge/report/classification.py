"""The Classification section: every classifier by macro F1, per frequency tier, and the paired
bootstraps `lmforge compare` left in the run directory."""

from __future__ import annotations

import math

from lmforge.report.artifacts import classifier_metrics, classifier_runs
from lmforge.report.context import Context
from lmforge.report.figures import new_figure, save_figure
from lmforge.report.format import (
    fmt_arrow,
    fmt_count,
    fmt_delta,
    fmt_name,
    fmt_num,
    fmt_plain,
    get_in,
)


def classification_section(ctx: Context) -> list:
    if not (runs := classifier_runs(ctx)):
        return []
    runs = sorted(runs, key=lambda r: -classifier_metrics(r.summary)[0]["macro_f1"])
    ms = [classifier_metrics(r.summary)[0] for r in runs]
    tiers = list(dict.fromkeys(t for m in ms for t in m.get("tier_macro_f1") or {}))
    head = [
        "run",
        "base",
        "method",
        "trainable",
        "accuracy",
        "macro F1",
        *(f"{t} F1" for t in tiers),
        "ECE → after T",
        "p50 ms",
        "MB",
    ]
    rows = [
        [
            r.name,
            fmt_name(str(s.get("source") or s.get("init") or "").removeprefix("pkg:")),
            fmt_plain(s.get("method")) + (" + distilled" if s.get("distill") else ""),
            fmt_count(s.get("params_trainable")),
            fmt_num(m.get("accuracy")),
            fmt_num(m.get("macro_f1")),
            *(fmt_num(get_in(m, f"tier_macro_f1.{t}")) for t in tiers),
            fmt_arrow(m.get("ece"), m.get("ece_after_temperature")),
            fmt_num(s.get("latency_ms_p50")),
            fmt_num(s.get("checkpoint_mb")),
        ]
        for r, m in zip(runs, ms)
        for s in [r.summary]
    ]
    splits = " / ".join(sorted({classifier_metrics(r.summary)[1] for r in runs}))
    why = (
        f"Metrics on the {splits} split, best macro F1 first. A tier column is the macro F1 over "
        "the labels of one frequency tier (head: the most frequent in training); ECE is before → "
        "after temperature scaling; latency is one example at a time (p50); MB: the checkpoint."
    )
    out = [("h2", "classification", "Classification"), ("p", why), ("table", head, rows)]
    fig, (ax,) = new_figure(width=8, height=1 + 0.3 * len(runs))
    names = [r.name for r in runs][::-1]
    ax.barh(names, [m["macro_f1"] for m in ms][::-1], color="#cfd8e3", label="macro F1")
    for j, t in enumerate(tiers):
        f1 = [get_in(m, f"tier_macro_f1.{t}", math.nan) for m in ms][::-1]
        ax.plot(f1, names, "o", ms=5, color=f"C{j}", label=f"{t} F1")
    ax.set(xlabel="F1", xlim=(0, 1), title="macro F1 (bars) and macro F1 per frequency tier (dots)")
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=7, loc="lower right")
    caption = "Where each classifier's quality comes from: frequent labels or rare ones"
    tiers_plot = save_figure(ctx, "classification-tiers", fig, caption)
    return out + [tiers_plot, *_comparisons(ctx, tiers)]


def _comparisons(ctx: Context, tiers: list[str]) -> list:
    """The paired bootstraps `lmforge compare` left in RUNS_DIR (compare-*.json)."""
    rows = []
    for f in sorted(ctx.root.glob("compare-*.json")):
        c = ctx.json(f)
        if isinstance(d := get_in(c, "macro_f1_difference_a_minus_b"), dict):
            row = [
                f"{fmt_name(c.get('a'))} − {fmt_name(c.get('b'))}",
                fmt_plain(c.get("split")),
                fmt_num(c.get("examples")),
                fmt_delta(d.get("overall")),
                fmt_num(get_in(d, "overall.p_a_not_better")),
                *(f"{get_in(d, f'{t}.delta', math.nan):+.3f}" for t in tiers),
            ]
            rows.append(row)
    head = [
        "a − b",
        "split",
        "examples",
        "Δ macro F1 [95% CI]",
        "P(a not better)",
        *(f"Δ {t}" for t in tiers),
    ]
    if not rows:
        return []
    return [("h3", "Paired bootstrap comparisons (compare-*.json)"), ("table", head, rows)]
