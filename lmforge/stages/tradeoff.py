"""One table, one plot and one recommendation for every classifier under a directory.

    lmforge tradeoff runs/demo --max-latency-ms 10 --min-macro-f1 0.4 --max-ece 0.05

Reads each run's summary.json (classify, baseline, quantize and distill runs alike), refuses
runs of different tasks (their label lists differ), marks the Pareto frontier of quality
against latency, measures what each compression cost against its source per tier (paired
bootstrap), checks the user's limits and recommends the best run that meets them.
Writes tradeoff.md, tradeoff.png and tradeoff.json into the directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.eval.classifier import compare
from lmforge.stages.summaries import ClassifierSummary
from lmforge.utils import atomic_write_text, read_json, write_json

COLUMNS = [
    ("macro_f1", "macro F1", ".3f"),
    ("tail_f1", "tail F1", ".3f"),
    ("accuracy", "accuracy", ".3f"),
    ("ece", "ECE", ".3f"),
    ("ece_after_temperature", "ECE after T", ".3f"),
    ("latency_ms_p50", "p50 ms", ".1f"),
    ("latency_ms_p95", "p95 ms", ".1f"),
    ("throughput_per_s", "per s", ",.0f"),
    ("peak_memory_mb", "peak MB", ",.0f"),
    ("checkpoint_mb", "size MB", ".1f"),
    ("params_trainable", "trainable", ",.0f"),
]


def collect(root: Path, split: str) -> list[dict]:
    runs, labels = [], {}
    for summary_file in sorted(root.glob("*/summary.json")):
        run = summary_file.parent
        s = ClassifierSummary.model_validate(read_json(summary_file))
        metrics = s.split(split)
        if metrics is None or metrics.macro_f1 is None:
            continue  # not a classifier evaluated on this split (a pretrain run, a cache, ...)
        if (run / "labels.json").is_file():
            n = None
            if (run / "eval" / split / "metrics.json").is_file():
                n = read_json(run / "eval" / split / "metrics.json")["num_examples"]
            # the same task and the same evaluation examples, or the numbers do not compare
            labels[run.name] = (*read_json(run / "labels.json")["names"], f"{n} examples")
        runs.append(
            {
                "run": run.name,
                "path": str(run),
                "method": s.method or s.stage or "",
                "source": s.source,
                "macro_f1": metrics.macro_f1,
                "accuracy": metrics.accuracy,
                "ece": metrics.ece,
                "ece_after_temperature": metrics.ece_after_temperature,
                "tail_f1": (metrics.tier_macro_f1 or {}).get("tail"),
                **{k: getattr(s, k) for k in ClassifierSummary.RUN_KEYS},
                "speed_note": s.speed_note,
            }
        )
    if not runs:
        raise ConfigError(
            f"{root} holds no classifier runs evaluated on '{split}' (directories with a "
            "summary.json from classify, baseline, quantize or distill)"
        )
    groups: dict[tuple, list[str]] = {}
    for name, names in labels.items():
        groups.setdefault(tuple(names), []).append(name)
    if len(groups) > 1:
        parts = "; ".join(
            f"{len(k) - 1} labels, {k[-1]}: {', '.join(v)}" for k, v in groups.items()
        )
        raise ConfigError(
            f"{root} mixes runs of different tasks or evaluation sets ({parts}); compare runs "
            "of one task and subsample only (move the others to another directory)"
        )
    return runs


def pareto(runs: list[dict]) -> None:
    """Mark runs no other run beats on both macro F1 (higher) and latency p50 (lower)."""
    for r in runs:
        r["pareto"] = r.get("latency_ms_p50") is not None and not any(
            o is not r
            and o.get("latency_ms_p50") is not None
            and o["macro_f1"] >= r["macro_f1"]
            and o["latency_ms_p50"] <= r["latency_ms_p50"]
            and (o["macro_f1"] > r["macro_f1"] or o["latency_ms_p50"] < r["latency_ms_p50"])
            for o in runs
        )


def damage(runs: list[dict], split: str) -> list[dict]:
    """What each compressed run lost against its source, per tier, with 95% intervals."""
    out = []
    for r in runs:
        if not r.get("source") or not Path(r["source"]).is_dir():
            continue
        diff = compare(r["path"], r["source"], split, n_resamples=1000)
        out.append(
            {
                "run": r["run"],
                "source": Path(r["source"]).name,
                "tiers": diff["macro_f1_difference_a_minus_b"],
            }
        )
    return out


def recommend(runs: list[dict], limits: dict) -> tuple[list[str], dict | None, str]:
    checks = {
        "max_latency_ms": lambda r, v: (r.get("latency_ms_p50") or float("inf")) <= v,
        "min_macro_f1": lambda r, v: r["macro_f1"] >= v,
        "max_ece": lambda r, v: r["ece"] <= v,
        "max_size_mb": lambda r, v: (r.get("checkpoint_mb") or float("inf")) <= v,
    }
    active = {k: v for k, v in limits.items() if v is not None}
    ok = [r for r in runs if all(checks[k](r, v) for k, v in active.items())]
    if not ok:
        return [], None, "no run meets every limit; relax one (the table shows how far each is)"
    best = max(ok, key=lambda r: (r["macro_f1"], -(r.get("latency_ms_p50") or 0)))
    reason = (
        f"the highest macro F1 ({best['macro_f1']:.3f}) of the {len(ok)} run(s) within the limits "
        f"{active or '(none given)'}, at {best.get('latency_ms_p50') or float('nan'):.1f} ms p50 "
        f"and {best.get('checkpoint_mb') or float('nan'):.1f} MB"
    )
    return [r["run"] for r in ok], best, reason


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib  # a second to import: only a run that draws pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [r for r in runs if r.get("latency_ms_p50") is not None]
    for r in pts:
        size = r.get("checkpoint_mb") or 1.0
        ax.scatter(
            r["latency_ms_p50"],
            r["macro_f1"],
            s=20 + 4 * size,
            alpha=0.5,
            color="tab:red" if r["pareto"] else "tab:blue",
        )
        ax.annotate(r["run"], (r["latency_ms_p50"], r["macro_f1"]), fontsize=7)
    front = sorted((r for r in pts if r["pareto"]), key=lambda r: r["latency_ms_p50"])
    ax.plot([r["latency_ms_p50"] for r in front], [r["macro_f1"] for r in front], "r--", lw=1)
    ax.set_xlabel("latency p50, batch 1 (ms)")
    ax.set_ylabel("macro F1")
    ax.set_title("quality vs latency (bubble = size on disk; red = Pareto frontier)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tradeoff(root: str | Path, split: str = "test", **limits) -> dict:
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory of runs")
    runs = collect(root, split)
    pareto(runs)
    hurt = damage(runs, split)
    ok, best, reason = recommend(runs, limits)
    plot(runs, root / "tradeoff.png")
    result = {
        "split": split,
        "limits": limits,
        "runs": runs,
        "damage": hurt,
        "meets_limits": ok,
        "recommended": best and best["run"],
        "reason": reason,
    }
    write_json(root / "tradeoff.json", result)
    atomic_write_text(root / "tradeoff.md", markdown(result))
    return result


def markdown(result: dict) -> str:
    head = "| run | method | " + " | ".join(c for _, c, _ in COLUMNS) + " | Pareto |"
    lines = [f"# Trade-off ({result['split']} split)", "", head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in sorted(result["runs"], key=lambda r: -r["macro_f1"]):
        cells = [format(r[k], f) if r.get(k) is not None else "-" for k, _, f in COLUMNS]
        mark = "yes" if r["pareto"] else ""
        lines.append(f"| {r['run']} | {r['method']} | " + " | ".join(cells) + f" | {mark} |")
    if result["damage"]:
        lines += [
            "",
            "## What compression cost (macro F1, compressed - source, 95% interval)",
            "",
            "| run | source | overall | head | mid | tail | rare |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in result["damage"]:
            cells = [_delta(d["tiers"].get(k)) for k in ("overall", "head", "mid", "tail", "rare")]
            lines.append(f"| {d['run']} | {d['source']} | " + " | ".join(cells) + " |")
    notes = [f"- {r['run']}: {r['speed_note']}" for r in result["runs"] if r.get("speed_note")]
    if notes:
        lines += ["", "## Speed notes", "", *notes]
    lines += [
        "",
        "Speed and memory are each run's own measurement when it was made; for ratios, "
        "re-measure side by side with `benchmarks/classify_speed.py` on a quiet machine.",
        "",
        "## Recommendation",
        "",
        f"Limits: {json.dumps(result['limits'])}",
        f"Within them: {', '.join(result['meets_limits']) or 'none'}",
        f"**{result['recommended'] or 'none'}**: {result['reason']}",
        "",
        "![](tradeoff.png)",
        "",
    ]
    return "\n".join(lines)


def _delta(t: dict | None) -> str:
    if t is None:
        return "-"
    lo, hi = t["ci95"]
    return f"{t['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
