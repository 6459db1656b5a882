"""Sweeps: one recipe run many times, each run an ordinary resumable run of that recipe.

    lmforge scaling sweep --config configs/demo/scaling.yaml    # pretrain: sizes x budgets
    lmforge distill grid --config configs/demo/classify-distill.yaml --temperatures 2 4 --alphas 0.5 0.9

A sweep is the one place besides the registry that calls a recipe: it sits above them (no
recipe imports another). Each run that has finished is read back, not trained again, so a
stopped sweep continues where it stopped. `lmforge scaling fit` reads a sweep's runs.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.config import Section, load_config
from lmforge.errors import ConfigError
from lmforge.stages import classify, pretrain
from lmforge.stages.classify import ClassifyConfig
from lmforge.stages.pretrain import PretrainConfig, model_config_for
from lmforge.stages.scaling import run_row
from lmforge.stages.summaries import ClassifySummary
from lmforge.tokenizer import Tokenizer
from lmforge.utils import write_json

# --------------------------------------------------------------------------------------------
# Scaling: pre-training runs over model sizes and compute budgets
# --------------------------------------------------------------------------------------------


class SweepConfig(Section):
    out_dir: str = "runs/demo/scaling"
    base: str = "configs/demo/pretrain.yaml"  # the pretrain recipe every run starts from
    overrides: list[str] = []  # applied to every run, e.g. [trainer.compile=false]
    depths: list[int] = [2, 3, 4, 6]  # lmforge-d<depth> presets (width 64 x depth)
    # IsoFLOP: every depth at each budget of training FLOPs (6N + attention, per token) ...
    budgets: list[float] = []
    # ... or a grid: every depth at each number of training tokens (approach 3 only; the
    # sizes and the data vary independently, which pins both exponents down)
    tokens: list[float] = []
    min_steps: int = (
        20  # a run shorter than this says nothing; such (depth, budget) pairs are skipped
    )
    predict_flops: float | None = (
        None  # report the fitted optimum at this budget (default: the largest x10)
    )


def plan(cfg: SweepConfig) -> list[dict]:
    """The runs of the sweep: depth, budget, steps, tokens, and where each goes."""
    base = load_config(PretrainConfig, cfg.base, cfg.overrides)
    tokenizer = Tokenizer.load(base.tokenizer) if Path(base.tokenizer).exists() else None
    tokens_per_step = (
        base.trainer.micro_batch_size * base.data.seq_len * base.trainer.grad_accum_steps
    )
    if bool(cfg.budgets) == bool(cfg.tokens):
        raise ConfigError(
            "a sweep sets either `budgets` (IsoFLOP: FLOPs per run) or `tokens` (a grid: "
            "training tokens per run), not both or neither"
        )
    runs, impossible = [], []
    for target in cfg.budgets or cfg.tokens:
        for depth in cfg.depths:
            run = load_config(
                PretrainConfig, cfg.base, [*cfg.overrides, f"preset=lmforge-d{depth}"]
            )
            mcfg = model_config_for(run, tokenizer) if tokenizer else run.model
            per_token = mcfg.flops_per_token(base.data.seq_len)
            tokens = target / per_token if cfg.budgets else target
            steps = int(tokens / tokens_per_step)
            if steps < cfg.min_steps:
                impossible.append((depth, target, steps))
                continue
            name = f"C{target:.0e}-d{depth}" if cfg.budgets else f"D{target:.0e}-d{depth}"
            budget = target if cfg.budgets else per_token * steps * tokens_per_step
            runs.append(
                {
                    "depth": depth,
                    "budget": budget,
                    "steps": steps,
                    "tokens": steps * tokens_per_step,
                    "flops_per_token": per_token,
                    "out_dir": str(Path(cfg.out_dir) / name),
                }
            )
    unit = "FLOPs" if cfg.budgets else "tokens"
    if not runs:
        raise ConfigError(
            f"no (depth, {unit}) pair reaches {cfg.min_steps} steps at {tokens_per_step} tokens per "
            f"step: raise `{'budgets' if cfg.budgets else 'tokens'}` (smallest "
            f"{min(cfg.budgets or cfg.tokens):.1e} {unit}) or use smaller depths"
        )
    for depth, target, steps in impossible:
        print(f"[scaling] skipped d{depth} at {target:.1e} {unit}: only {steps} steps")
    return runs


def sweep(cfg: SweepConfig) -> list[dict]:
    """Run (or read back) every planned run; returns the table rows."""
    rows = []
    runs = plan(cfg)
    # The plan first: a fit of a sweep still running (or stopped) groups its runs by the
    # planned budgets, not by the slightly different FLOPs each run realised.
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    write_json(
        Path(cfg.out_dir) / "sweep.json",
        {
            "config": cfg.model_dump(mode="json"),
            "runs": [{"run": r["out_dir"], "flops": r["budget"]} for r in runs],
        },
    )
    for k, r in enumerate(runs, 1):
        if not (Path(r["out_dir"]) / "summary.json").is_file():
            print(
                f"[scaling] run {k}/{len(runs)}: d{r['depth']}, {r['budget']:.1e} FLOPs, {r['steps']} steps"
            )
            overrides = [
                *cfg.overrides,
                f"preset=lmforge-d{r['depth']}",
                f"out_dir={r['out_dir']}",
                f"trainer.max_steps={r['steps']}",
                f"trainer.warmup_steps={max(1, r['steps'] // 10)}",
                "trainer.time_limit_s=0",
            ]
            pretrain.run(load_config(PretrainConfig, cfg.base, overrides))
        rows.append(run_row(Path(r["out_dir"]), budget=r["budget"]))
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    write_json(
        Path(cfg.out_dir) / "sweep.json", {"config": cfg.model_dump(mode="json"), "runs": rows}
    )
    return rows


# --------------------------------------------------------------------------------------------
# Distillation: one student per (temperature, alpha)
# --------------------------------------------------------------------------------------------


def distill_grid(cfg: ClassifyConfig, temperatures: list[float], alphas: list[float]) -> list[dict]:
    """One student per (T, alpha) under cfg.out_dir/T{T}-a{alpha}, each a normal resumable run
    (a finished one is read back, not retrained); returns the table rows."""
    rows = []
    for t in temperatures:
        for a in alphas:
            out = Path(cfg.out_dir) / f"T{t:g}-a{a:g}"
            if not (out / "summary.json").is_file():
                run = cfg.model_copy(deep=True)
                run.out_dir = str(out)
                run.distill.temperature, run.distill.alpha = t, a
                classify.train(run)
            summary = ClassifySummary.read(out)
            split = summary.test or summary
            tiers = split.tier_macro_f1 or {}
            rows.append(
                {
                    "temperature": t,
                    "alpha": a,
                    "run": str(out),
                    "macro_f1": split.macro_f1,
                    "tail_f1": tiers.get("tail"),
                    "rare_f1": tiers.get("rare"),
                    "ece": split.ece,
                    "accuracy": split.accuracy,
                }
            )
    write_json(Path(cfg.out_dir) / "grid.json", rows)
    return rows
