"""The Pre-training section: decoders and encoders, their loss curves and samples, and the smaller
language models made from them (distilled, quantized)."""

from __future__ import annotations

from lmforge.report.context import Context, Run, wall_time
from lmforge.report.figures import metric_series, new_figure, run_events, save_figure
from lmforge.report.format import (
    fmt_count,
    fmt_duration,
    fmt_name,
    fmt_num,
    fmt_pct,
    fmt_plain,
    fmt_vs,
)


def pretraining_section(ctx: Context) -> list:
    runs, small = ctx.of("pretrain", "encoder"), ctx.of("lm-distill", "quantize-lm")
    if not runs and not small:
        return []
    head = [
        "run",
        "objective",
        "params",
        "tokens",
        "epochs",
        "val loss",
        "val bpb",
        "masked acc",
        "tokens/s",
        "MFU",
        "precision",
        "wall time",
    ]
    rows = [
        [
            r.name,
            "masked (encoder)" if r.kind == "encoder" else "next token",
            fmt_count(s.get("params")),
            fmt_count(s.get("tokens_seen")),
            fmt_num(s.get("epochs")),
            fmt_num(s.get("val_loss")),
            fmt_num(s.get("val_bpb")),
            fmt_pct(s.get("val_masked_accuracy")),
            fmt_num(s.get("tokens_per_second")),
            fmt_pct(s.get("mfu")),
            fmt_plain(s.get("precision")),
            fmt_duration(wall_time(r)),
        ]
        for r in runs + ctx.of("lm-distill")
        for s in [r.summary]
    ]
    out = [("h2", "pretraining", "Pre-training"), ("table", head, rows)]
    panels = [
        (title, rs)
        for title, rs in (
            ("decoder: next-token loss", ctx.of("pretrain")),
            ("encoder: masked-token loss", ctx.of("encoder")),
        )
        if rs
    ]
    if panels:
        fig, axes = new_figure(len(panels), width=5.6 * len(panels), height=3.8)
        for ax, (title, rs) in zip(axes, panels):
            for i, r in enumerate(rs):
                rows = ctx.jsonl(r.path / "metrics.jsonl")
                train, val = (
                    metric_series(rows, "loss", True),
                    metric_series(rows, "val_loss", True),
                )
                ax.plot(*train, color=f"C{i}", lw=1, alpha=0.5, label=f"{r.name} train")
                ax.plot(*val, "o-", color=f"C{i}", ms=3, label=f"{r.name} val")
            ax.set(title=title, xlabel="tokens seen (millions)", ylabel="loss (nats/token)")
            ax.legend(fontsize=7)
        caption = "Training loss (thin) and held-out loss (dots), from metrics.jsonl"
        out += [save_figure(ctx, "pretraining-curves", fig, caption), *run_events(ctx, runs)]
    if small:
        out += _small_lms(ctx, small)
    r = ctx.main("pretrain")
    if r and (samples := r.summary.get("samples") or ctx.jsonl(r.path / "samples.jsonl")):
        out.append(("h3", f"Samples from {r.name}"))
        out += [
            ("sample", str(x.get("prompt", "")), str(x.get("completion", ""))) for x in samples[:4]
        ]
    if (r := ctx.main("encoder")) and (samples := r.summary.get("samples")):
        top = ["  ".join(map(repr, (x.get("guesses") or [[]])[0])) for x in samples]
        rows = [[str(x.get("prompt")), guesses] for x, guesses in zip(samples, top)]
        out += [("h3", f"Masked-token guesses from {r.name}"), ("table", ["prompt", "top 5"], rows)]
    return out


def _small_lms(ctx: Context, runs: list[Run]) -> list:
    """Distilled and quantized language models; a student next to a plain run of its size and
    tokens when there is one, since that is the comparison distillation has to win."""
    plain = {(r.summary.get("params"), r.summary.get("tokens_seen")): r for r in ctx.of("pretrain")}
    rows = []
    for r in runs:
        s, d = r.summary, r.summary.get("distill") or {}
        twin = plain.get((s.get("params"), s.get("tokens_seen"))) if d else None
        if d:
            method = f"distilled (T {d.get('temperature')}, α {d.get('alpha')})"
        else:
            method = fmt_plain(s.get("method"))
        rows.append(
            [
                r.name,
                method,
                fmt_name(d.get("teacher") or s.get("source")),
                fmt_count(s.get("params")),
                fmt_num(s.get("checkpoint_mb")),
                fmt_num(s.get("val_bpb")),
                fmt_vs(s.get("val_bpb"), d.get("teacher_val_bpb") or s.get("source_val_bpb")),
                f"{twin.name}: {fmt_num(twin.summary.get('val_bpb'))}" if twin else "–",
            ]
        )
    head = [
        "run",
        "method",
        "from",
        "params",
        "MB",
        "val bpb",
        "its source's (change)",
        "plain run, same size",
    ]
    return [("h3", "Smaller language models: distilled and quantized"), ("table", head, rows)]
