"""Scaling-law recipes: a sweep of small pre-training runs, and a law fitted to them.

    lmforge scaling sweep --config configs/demo/scaling.yaml     # IsoFLOP: sizes x budgets
    lmforge scaling fit runs/demo/scaling --out runs/demo/scaling-fit

Each run of a sweep is a normal `lmforge pretrain` run (the base recipe, a depth preset, and a
step count sized to its FLOP budget with its own cosine schedule), resumable, and skipped when
finished. The fit reads every finished run under a directory: Chinchilla's approach 3 (the
parametric law) when there are enough runs, approach 2 (a parabola per budget) when each
budget has three sizes or more, with bootstrap intervals on the exponents, plots, and the
predicted optimum for a budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.config import read_yaml, validate
from lmforge.data.shards import LMData
from lmforge.errors import ConfigError
from lmforge.eval.scaling_laws import (
    CHINCHILLA,
    ParametricLaw,
    accounting,
    fit_isoflop,
    fit_parametric,
)
from lmforge.model.config import ModelConfig
from lmforge.stages.summaries import PretrainSummary
from lmforge.utils import read_json, write_json


def run_row(run: Path, budget: float | None = None) -> dict:
    """One finished pretrain run as a point: N, D, C and its val loss, with what must match
    across a fit (the vocabulary and the data the shards were built from)."""
    s = PretrainSummary.read(run)
    recipe = read_yaml(run / "config.yaml")  # the config in force: the model as it trained
    model = validate(ModelConfig, recipe.get("model", {}), f"{run}/config.yaml model")
    data = validate(LMData, recipe.get("data", {}), f"{run}/config.yaml data")
    cost = accounting(model, data.seq_len, s.tokens_seen)
    return {
        "run": str(run),
        "params": s.params,
        "non_embedding": s.params_non_embedding,
        "tokens": s.tokens_seen,
        "flops": budget or cost["flops"],
        "flops_realised": cost["flops"],
        "flops_6nd": cost["flops_6nd"],
        "val_loss": s.val_loss,
        "val_bpb": s.val_bpb,
        "wall_seconds": s.stage_seconds,
        "mfu": s.mfu,
        "tokenizer": recipe.get("tokenizer"),
        "data": data.shards or data.path,
    }


def fit(
    runs_dir: str | Path, out: str | Path, bootstrap: int = 100, predict_flops: float | None = None
) -> dict:
    """Fit the laws to every finished pre-training run under `runs_dir`."""

    runs_dir, out = Path(runs_dir), Path(out)
    rows = [
        run_row(p.parent)
        for p in sorted(runs_dir.glob("*/summary.json"))
        if read_json(p).get("stage") == "pretrain"
    ]
    sweep_file = runs_dir / "sweep.json"
    planned = {}
    if sweep_file.is_file():  # the planned budgets, not the rounded realised ones, group runs
        planned = {r["run"]: r["flops"] for r in read_json(sweep_file)["runs"]}
    for r in rows:
        # runs from elsewhere: budgets equal to 2 significant digits form one IsoFLOP group
        r["flops"] = planned.get(r["run"], float(f"{r['flops']:.1e}"))
    if not rows:
        raise ConfigError(f"{runs_dir} holds no finished pre-training runs (*/summary.json)")
    mixed = {(r["tokenizer"], r["data"]) for r in rows}
    if len(mixed) > 1:
        raise ConfigError(
            f"{runs_dir} mixes runs with different tokenizers or data ({sorted(map(str, mixed))}); "
            "a law is fitted to one setting: put each sweep in its own directory"
        )
    result: dict = {"runs": rows}
    n = [r["params"] for r in rows]
    d = [r["tokens"] for r in rows]
    loss = [r["val_loss"] for r in rows]
    notes = []
    try:
        p = fit_parametric(n, d, loss, bootstrap=bootstrap)
        law = p.pop("law")
        result["approach3"] = {
            **p,
            "E": law.E,
            "A": law.A,
            "B": law.B,
            "alpha": law.alpha,
            "beta": law.beta,
        }
        c = predict_flops or 10 * max(r["flops"] for r in rows)
        n_opt, d_opt = law.optimum(c)
        result["predicted_optimum"] = {
            "flops": c,
            "n_opt": n_opt,
            "d_opt": d_opt,
            "tokens_per_param": d_opt / n_opt,
            "loss": law.loss(n_opt, d_opt),
        }
    except ValueError as e:
        notes.append(f"approach 3 not fitted: {e}")
    try:
        result["approach2"] = fit_isoflop([r["flops"] for r in rows], n, loss, bootstrap=bootstrap)
    except ValueError as e:
        notes.append(f"approach 2 not fitted: {e}")
    result["chinchilla_a"] = CHINCHILLA.beta / (CHINCHILLA.alpha + CHINCHILLA.beta)
    result["notes"] = notes
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "fit.json", result)
    _plot(rows, result, out / "isoflop.png")
    _plot_law(rows, result, out / "law.png")
    return result


def _plot(rows: list[dict], result: dict, path: Path) -> None:
    """IsoFLOP curves: each budget's runs (connected when a budget has several sizes), the
    fitted law's loss along a budget (D = C / 6N) with its optimum starred, and the predicted
    optimum at the prediction budget."""
    import matplotlib  # a second to import: only a run that draws pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = sorted({r["flops"] for r in rows})
    shared = any(sum(r["flops"] == b for r in rows) > 1 for b in budgets)
    for i, budget in enumerate(budgets if shared else []):
        pts = sorted((r["params"], r["val_loss"]) for r in rows if r["flops"] == budget)
        ax.plot(
            [p for p, _ in pts],
            [v for _, v in pts],
            "o-",
            color=f"C{i % 10}",
            label=f"runs at {budget:.1e} FLOPs",
        )
    if not shared:
        ax.scatter(
            [r["params"] for r in rows],
            [r["val_loss"] for r in rows],
            c="k",
            s=14,
            label="runs (each its own budget)",
            zorder=3,
        )
    for m in result.get("approach2", {}).get("minima", []):
        ax.axvline(m["n_opt"], color="grey", lw=0.8, ls=":")
    a3, opt = result.get("approach3"), result.get("predicted_optimum")
    if a3:
        law = ParametricLaw("fit", "approach 3", *(a3[k] for k in ("E", "A", "B", "alpha", "beta")))
        curves = sorted({budgets[0], budgets[-1], *([opt["flops"]] if opt else [])})
        optima = [law.optimum(c)[0] for c in curves]
        sizes = [r["params"] for r in rows] + optima
        grid = np.geomspace(min(sizes) / 3, max(sizes) * 3, 120)
        for c, n_opt in zip(curves, optima):
            ax.plot(grid, [law.loss(n, c / (6 * n)) for n in grid], "--", lw=1, color="grey")
            best = law.loss(n_opt, c / (6 * n_opt))
            ax.plot(n_opt, best, "*", ms=11, color="C3" if opt and c == opt["flops"] else "grey")
            ax.annotate(
                f"{c:.1e}", (n_opt, best), fontsize=7, xytext=(4, -10), textcoords="offset points"
            )
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("val loss (nats/token)")
    title = "IsoFLOP curves"
    if a3:
        title += f"; law (dashed): alpha {a3['alpha']:.2f}, beta {a3['beta']:.2f}, a {a3['a']:.2f}"
    if opt:
        title += f"\npredicted optimum at {opt['flops']:.1e} FLOPs: N {opt['n_opt']:.3g}, D {opt['d_opt']:.3g}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_law(rows: list[dict], result: dict, path: Path) -> None:
    """Loss against N (a line per token count) and against D (a line per size), the runs as
    points and approach 3's law as curves through them."""
    import matplotlib  # a second to import: only a run that draws pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a3 = result.get("approach3")

    def law(n, d):
        return a3["E"] + a3["A"] / n ** a3["alpha"] + a3["B"] / d ** a3["beta"]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    by_tokens: dict[float, list] = {}
    by_size: dict[int, list] = {}
    for r in rows:
        by_tokens.setdefault(float(f"{r['tokens']:.1e}"), []).append(r)
        by_size.setdefault(r["params"], []).append(r)
    n_all = np.array([r["params"] for r in rows], dtype=float)
    d_all = np.array([r["tokens"] for r in rows], dtype=float)
    for ax, groups, x_key, label, xs in (
        (left, by_tokens, "params", lambda k: f"D = {k:.1e} tokens", n_all),
        (right, by_size, "tokens", lambda k: f"N = {k / 1e6:.1f}M", d_all),
    ):
        grid = np.geomspace(xs.min() / 1.5, xs.max() * 1.5, 50)
        for i, (key, members) in enumerate(sorted(groups.items())):
            members = sorted(members, key=lambda r: r[x_key])
            color = f"C{i % 10}"
            ax.plot(
                [m[x_key] for m in members],
                [m["val_loss"] for m in members],
                "o",
                color=color,
                label=label(key),
            )
            if a3 and len(members) > 1:
                if x_key == "params":
                    ax.plot(
                        grid,
                        law(grid, np.mean([m["tokens"] for m in members])),
                        "-",
                        color=color,
                        lw=1,
                    )
                else:
                    ax.plot(
                        grid,
                        law(np.mean([m["params"] for m in members]), grid),
                        "-",
                        color=color,
                        lw=1,
                    )
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    left.set_xlabel("parameters N")
    right.set_xlabel("training tokens D")
    left.set_ylabel("val loss (nats/token)")
    title = "runs (points)"
    if a3:
        title += (
            f" and the fitted law L = {a3['E']:.2f} + {a3['A']:.3g}/N^{a3['alpha']:.2f}"
            f" + {a3['B']:.3g}/D^{a3['beta']:.2f} (curves)"
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
