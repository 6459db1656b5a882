"""The Trade-off section: quality against speed and size, the Pareto frontier, the recommended
deployment, and what compression cost."""

from __future__ import annotations

import math

from lmforge.report.context import Context
from lmforge.report.figures import label_points, new_figure, save_figure
from lmforge.report.format import fmt_arrow, fmt_delta, fmt_num, fmt_plain, get_in, is_number


def _frontier(points: list[dict], key: str) -> list[dict]:
    """The runs no other run beats on both macro F1 (higher) and `key` (lower)."""

    def beaten(p, o):
        return (
            o["macro_f1"] >= p["macro_f1"]
            and o[key] <= p[key]
            and (o["macro_f1"], -o[key]) != (p["macro_f1"], -p[key])
        )

    return [p for p in points if not any(o is not p and beaten(p, o) for o in points)]


def tradeoff_section(ctx: Context) -> list:
    if not (r := ctx.main("tradeoff")):
        return []
    s, ok, rec = r.summary, set(r.summary.get("meets_limits") or []), r.summary.get("recommended")
    runs = [x for x in s.get("runs") or [] if isinstance(x, dict) and is_number(x.get("macro_f1"))]
    runs.sort(key=lambda x: -x["macro_f1"])
    limits = {k: v for k, v in (s.get("limits") or {}).items() if v is not None}
    keys = (
        "latency_ms_p50",
        "latency_ms_p95",
        "throughput_per_s",
        "peak_memory_mb",
        "checkpoint_mb",
    )
    head = [
        "run",
        "method",
        "macro F1",
        "tail F1",
        "accuracy",
        "ECE → after T",
        "p50 ms",
        "p95 ms",
        "per s",
        "peak MB",
        "size MB",
        "Pareto",
        "within limits",
    ]
    rows = [
        [
            x.get("run"),
            fmt_plain(x.get("method")),
            fmt_num(x["macro_f1"]),
            fmt_num(x.get("tail_f1")),
            fmt_num(x.get("accuracy")),
            fmt_arrow(x.get("ece"), x.get("ece_after_temperature")),
            *(fmt_num(x.get(k)) for k in keys),
            "yes" if x.get("pareto") else "",
            "yes" if x.get("run") in ok else "",
        ]
        for x in runs
    ]
    lim = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in limits.items()) or "none"
    reason = str(s.get("reason", ""))
    out = [
        ("h2", "tradeoff", "Trade-off"),
        ("p", f"Every classifier on the {s.get('split')} split. Limits: {lim}."),
        ("callout", f"**Recommended: {rec or 'none'}**. {reason[:1].upper()}{reason[1:]}."),
        ("table", head, rows),
        _pareto_plot(ctx, runs, limits, rec),
    ]
    if dmg := [d for d in s.get("damage") or [] if isinstance(d, dict)]:
        tiers = list(dict.fromkeys(t for d in dmg for t in d.get("tiers") or {}))
        rows = [
            [d.get("run"), d.get("source"), *(fmt_delta(get_in(d, f"tiers.{t}")) for t in tiers)]
            for d in dmg
        ]
        out += [
            ("h3", "What compression cost (macro F1, compressed − source, 95% interval)"),
            ("table", ["run", "source", *tiers], rows),
        ]
    changed = []  # tradeoff.json is a snapshot: say when a run was measured again after it
    for x in runs:
        now = ctx.json(r.path / str(x.get("run")) / "summary.json") or {}
        moved = [
            k
            for k in ("latency_ms_p50", "checkpoint_mb")
            if is_number(now.get(k))
            and is_number(x.get(k))
            and not math.isclose(now[k], x[k], rel_tol=1e-6)
        ]
        if moved:
            changes = ", ".join(f"{k} {fmt_arrow(x[k], now[k])}" for k in moved)
            changed.append(f"{x['run']} ({changes})")
    if changed:
        stale = (
            f"tradeoff.json is older than the summaries of {'; '.join(changed)}: run "
            f"`lmforge tradeoff {r.path}` again to refresh this table and the pick."
        )
        out.append(("note", stale))
    return out


def _pareto_plot(ctx: Context, runs: list[dict], limits: dict, rec: str | None) -> tuple:
    fig, axes = new_figure(2, width=11.5, height=4.6)
    panels = (
        (axes[0], "latency_ms_p50", "latency p50, one example (ms)", limits.get("max_latency_ms")),
        (axes[1], "checkpoint_mb", "size on disk (MB)", limits.get("max_size_mb")),
    )
    for ax, key, label, limit in panels:
        pts = [x for x in runs if is_number(x.get(key))]
        front = sorted(_frontier(pts, key), key=lambda x: x[key])
        best = [x for x in pts if x["run"] == rec]

        def xy(points: list[dict], key=key) -> tuple[list, list]:
            return [x[key] for x in points], [x["macro_f1"] for x in points]

        ax.scatter(*xy(pts), s=26, color="#4c78a8", zorder=3)
        ax.plot(*xy(front), "o--", color="#d62728", ms=7, lw=1, zorder=4, label="Pareto frontier")
        star = {"s": 320, "marker": "*", "facecolor": "none", "edgecolor": "#e6a700", "lw": 1.6}
        ax.scatter(*xy(best), **star, zorder=5, label="recommended")
        if limit:
            ax.axvline(limit, color="grey", ls=":", lw=1, label="limit")
        if limits.get("min_macro_f1"):
            ax.axhline(limits["min_macro_f1"], color="grey", ls=":", lw=1)
        ax.set(xlabel=label, ylabel="macro F1")
        ax.legend(fontsize=7, loc="lower right")
        label_points(ax, [(x[key], x["macro_f1"], x["run"]) for x in pts])
    caption = (
        "Quality against speed and size. Red: the Pareto frontier; star: the pick; dotted: the "
        "limits"
    )
    return save_figure(ctx, "tradeoff-pareto", fig, caption)
