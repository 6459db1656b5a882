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

from lmforge.config import Section, load_config
from lmforge.errors import ConfigError
from lmforge.stages.pretrain import PretrainConfig
from lmforge.utils import read_json, write_json


class SweepConfig(Section):
    out_dir: str = "runs/demo/scaling"
    base: str = "configs/demo/pretrain.yaml"  # the pretrain recipe every run starts from
    overrides: list[str] = []  # applied to every run, e.g. [trainer.compile=false]
    depths: list[int] = [2, 3, 4, 6]  # lmforge-d<depth> presets (width 64 x depth)
    budgets: list[float] = [3e13, 1e14, 3e14]  # training FLOPs per run (6N + attention, per token)
    min_steps: int = (
        20  # a run shorter than this says nothing; such (depth, budget) pairs are skipped
    )
    predict_flops: float | None = (
        None  # report the fitted optimum at this budget (default: the largest x10)
    )


def plan(cfg: SweepConfig) -> list[dict]:
    """The runs of the sweep: depth, budget, steps, tokens, and where each goes."""
    from lmforge.stages.pretrain import model_config_for
    from lmforge.tokenizer import Tokenizer

    base = load_config(PretrainConfig, cfg.base, cfg.overrides)
    tokenizer = Tokenizer.load(base.tokenizer) if Path(base.tokenizer).exists() else None
    tokens_per_step = (
        base.trainer.micro_batch_size * base.data.seq_len * base.trainer.grad_accum_steps
    )
    runs, impossible = [], []
    for budget in cfg.budgets:
        for depth in cfg.depths:
            run = load_config(
                PretrainConfig, cfg.base, [*cfg.overrides, f"preset=lmforge-d{depth}"]
            )
            mcfg = model_config_for(run, tokenizer) if tokenizer else run.model
            per_token = mcfg.flops_per_token(base.data.seq_len)
            steps = int(budget / (per_token * tokens_per_step))
            if steps < cfg.min_steps:
                impossible.append((depth, budget, steps))
                continue
            runs.append({"depth": depth, "budget": budget, "steps": steps,
                         "tokens": steps * tokens_per_step, "flops_per_token": per_token,
                         "out_dir": str(Path(cfg.out_dir) / f"C{budget:.0e}-d{depth}")})  # fmt: skip
    if not runs:
        raise ConfigError(
            f"no (depth, budget) pair reaches {cfg.min_steps} steps at {tokens_per_step} tokens per "
            f"step: raise `budgets` (smallest {min(cfg.budgets):.1e} FLOPs) or use smaller depths"
        )
    for depth, budget, steps in impossible:
        print(f"[scaling] skipped d{depth} at {budget:.1e} FLOPs: only {steps} steps")
    return runs


def sweep(cfg: SweepConfig) -> list[dict]:
    """Run (or read back) every planned run; returns the table rows."""
    from lmforge.stages import pretrain

    rows = []
    runs = plan(cfg)
    for k, r in enumerate(runs, 1):
        summary_path = Path(r["out_dir"]) / "summary.json"
        if not summary_path.is_file():
            print(
                f"[scaling] run {k}/{len(runs)}: d{r['depth']}, {r['budget']:.1e} FLOPs, {r['steps']} steps"
            )
            overrides = [*cfg.overrides, f"preset=lmforge-d{r['depth']}", f"out_dir={r['out_dir']}",
                         f"trainer.max_steps={r['steps']}",
                         f"trainer.warmup_steps={max(1, r['steps'] // 10)}", "trainer.time_limit_s=0"]  # fmt: skip
            pretrain.run(load_config(PretrainConfig, cfg.base, overrides))
        rows.append(run_row(Path(r["out_dir"]), budget=r["budget"]))
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    write_json(
        Path(cfg.out_dir) / "sweep.json", {"config": cfg.model_dump(mode="json"), "runs": rows}
    )
    return rows


def run_row(run: Path, budget: float | None = None) -> dict:
    """One finished pretrain run as a point: N, D, C and its val loss, with what must match
    across a fit (the vocabulary and the data the shards were built from)."""
    s = read_json(run / "summary.json")
    config = load_config(PretrainConfig, run / "config.yaml")
    return {"run": str(run), "params": s["params"], "non_embedding": s["params_non_embedding"],
            "tokens": s["tokens_seen"], "flops": budget or s["flops_per_token"] * s["tokens_seen"],
            "val_loss": s["val_loss"], "val_bpb": s.get("val_bpb"),
            "tokenizer": config.tokenizer, "data": config.data.shards or config.data.path}  # fmt: skip


def fit(runs_dir: str | Path, out: str | Path, bootstrap: int = 100,
        predict_flops: float | None = None) -> dict:  # fmt: skip
    """Fit the laws to every finished pre-training run under `runs_dir`."""
    from lmforge.eval.scaling_laws import CHINCHILLA, fit_isoflop, fit_parametric

    runs_dir, out = Path(runs_dir), Path(out)
    rows = [run_row(p.parent) for p in sorted(runs_dir.glob("*/summary.json"))
            if read_json(p).get("stage") == "pretrain"]  # fmt: skip
    sweep_file = runs_dir / "sweep.json"
    if sweep_file.is_file():  # the planned budgets, not the rounded realised ones, group runs
        planned = {r["run"]: r["flops"] for r in read_json(sweep_file)["runs"]}
        for r in rows:
            r["flops"] = planned.get(r["run"], r["flops"])
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
        result["predicted_optimum"] = {"flops": c, "n_opt": n_opt, "d_opt": d_opt,
                                       "tokens_per_param": d_opt / n_opt, "loss": law.loss(n_opt, d_opt)}  # fmt: skip
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
    return result


def _plot(rows: list[dict], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for budget in sorted({r["flops"] for r in rows}):
        pts = sorted((r["params"], r["val_loss"]) for r in rows if r["flops"] == budget)
        ax.plot([p for p, _ in pts], [v for _, v in pts], "o-", label=f"{budget:.1e} FLOPs")
    for m in result.get("approach2", {}).get("minima", []):
        ax.axvline(m["n_opt"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("val loss (nats/token)")
    a3 = result.get("approach3")
    title = "IsoFLOP curves"
    if a3:
        title += f"; fit: alpha {a3['alpha']:.2f}, beta {a3['beta']:.2f}, a {a3['a']:.2f}"
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
