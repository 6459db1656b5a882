"""The Mid-training section: val bpb before and after on each domain, forgetting, the realised
data mix, and the loss by position past the old context."""

from __future__ import annotations

import math

import numpy as np

from lmforge.report.artifacts import midtrain_domains
from lmforge.report.context import Context, Run, wall_time
from lmforge.report.figures import metric_series, new_figure, save_figure
from lmforge.report.format import fmt_arrow, fmt_count, fmt_duration, fmt_num, fmt_pct, get_in


def midtraining_section(ctx: Context) -> list:
    if not (runs := ctx.of("midtrain")):
        return []
    head = [
        "run",
        "context",
        "RoPE",
        "tokens",
        "val bpb before → after",
        "forgetting (bpb)",
        "loss past the old context",
        "tokens/s",
        "wall time",
    ]
    rows = []
    for r in runs:
        s, c = r.summary, r.summary.get("context") or {}
        past = get_in(s, "loss_by_position.beyond_old_context") or {}
        rows.append(
            [
                r.name,
                f"{c.get('from')} → {c.get('to')}",
                f"{c.get('rope_scaling')}, θ {fmt_num(c.get('rope_theta'))}",
                fmt_count(s.get("tokens_seen")),
                "; ".join(f"{d} {fmt_arrow(b, a)}" for d, b, a in midtrain_domains(s)),
                f"{get_in(s, 'forgetting_bpb', math.nan):+.3f}",
                fmt_arrow(past.get("before"), past.get("after")) if past else "–",
                fmt_num(s.get("tokens_per_second")),
                fmt_duration(wall_time(r)),
            ]
        )
    why = (
        "Forgetting: the change of val bpb on the starting data (positive is worse). Loss past "
        "the old context: the mean next-token loss (nats) at the positions the starting model "
        "was never trained on, before → after."
    )
    out = [("h2", "midtraining", "Mid-training"), ("table", head, rows), ("p", why)]
    for r in runs:
        if isinstance(mix := r.summary.get("realised_mix"), dict):
            shares = ", ".join(f"{k} {fmt_pct(get_in(v, 'share'))}" for k, v in mix.items())
            out.append(("p", f"{r.name} realised mix: {shares} of the tokens."))
    fig, axes = new_figure(2, width=11, height=3.6)
    for i, r in enumerate(runs):
        rows = ctx.jsonl(r.path / "metrics.jsonl")
        # step 0: the starting model, as the stage measured it
        for d, b, _ in midtrain_domains(r.summary):
            ax = axes[0] if d == "start data" else axes[1]
            x, y = metric_series(rows, "val_bpb_init" if d == "start data" else f"val_bpb_{d}")
            label = r.name if ax is axes[0] else f"{r.name}: {d}"
            ax.plot([0, *x], [b, *y], "o-", ms=3, color=f"C{i}", label=label)
    axes[0].set(title="val bpb on the starting data", xlabel="step", ylabel="bits per byte")
    axes[1].set(title="val bpb on the new domains", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7) if ax.lines else ax.set_visible(False)
    caption = "Held-out bits per byte during mid-training (step 0: the starting model)"
    curves = save_figure(ctx, "midtraining-curves", fig, caption)
    return out + [curves, *_loss_by_position(ctx, runs)]


def _loss_by_position(ctx: Context, runs: list[Run]) -> list:
    curves = []
    for r in runs:
        if (path := r.path / "loss_by_position.npy").is_file():
            try:  # (2, positions): the loss before and after, at each position
                curves.append((r, np.load(path, allow_pickle=False)))
            except (OSError, ValueError) as e:
                ctx.note(f"`{path}` could not be read ({e}).")
    if not curves:
        return []
    w = max(1, curves[0][1].shape[1] // 16)  # a few dozen documents: single positions are noise

    def smooth(c):
        return np.arange(len(c) - w + 1) + w / 2, np.convolve(c, np.ones(w) / w, mode="valid")

    fig, (ax,) = new_figure(width=8, height=3.8)
    ax.plot(*smooth(curves[0][1][0]), "--", color="grey", label="before (the starting model)")
    for i, (r, c) in enumerate(curves):
        ax.plot(*smooth(c[1]), color=f"C{i}", label=f"after {r.name}")
    if old := get_in(curves[0][0].summary, "context.from"):
        ax.axvline(old, color="k", ls=":", lw=1, label=f"old context ({old})")
    ax.set(
        xlabel="token position in the document",
        ylabel="next-token loss (nats)",
        title="loss by position on held-out long documents",
    )
    ax.legend(fontsize=7)
    caption = f"Loss by position ({w}-token moving average), from loss_by_position.npy"
    return [save_figure(ctx, "midtraining-loss-by-position", fig, caption)]
