"""The Scaling section: what each sweep planned against what is on disk, and each fit's law,
exponents and predicted optimum."""

from __future__ import annotations

from lmforge.report.context import Context, Run
from lmforge.report.figures import copy_figure
from lmforge.report.format import clip_text, fmt_ci, fmt_count, fmt_name, fmt_num, get_in, is_number


def scaling_section(ctx: Context) -> list:
    fits, sweeps = ctx.of("scaling-fit"), ctx.of("scaling-sweep")
    if not fits and not sweeps:
        return []
    out = [("h2", "scaling", "Scaling")]
    for r in sweeps:  # what the sweep planned against what is on disk now
        cfg, dirs = r.summary.get("config") or {}, sorted(d for d in r.path.iterdir() if d.is_dir())
        listed = [fmt_name(get_in(x, "run")) for x in r.summary.get("runs") or []]
        done = [d.name for d in dirs if (d / "summary.json").is_file()]
        gone = [n for n in listed if n not in {d.name for d in dirs}]
        unfinished = [d.name for d in dirs if d.name not in done]
        if cfg.get("budgets"):
            grid = f"FLOP budgets {', '.join(map(fmt_num, cfg['budgets']))}"
        else:
            grid = f"token counts {', '.join(map(fmt_num, cfg.get('tokens') or []))}"
        text = (
            f"Sweep `{r.name}`: depths {cfg.get('depths')} × {grid}. sweep.json lists "
            f"{len(listed)} runs; {len(done)} finished runs are on disk"
        )
        text += f"; missing from disk: {', '.join(gone)}" if gone else ""
        text += f"; unfinished: {', '.join(unfinished)}" if unfinished else ""
        out.append(("p", text + "."))
    for r in fits:
        out += _fit(ctx, r)
    return out


def _fit(ctx: Context, r: Run) -> list:
    s = r.summary
    a3, a2 = s.get("approach3") or {}, s.get("approach2") or {}
    opt = s.get("predicted_optimum") or {}
    rows = []
    if a3:
        law = (
            f"L = {fmt_num(a3.get('E'))} + {fmt_num(a3.get('A'))} / N^{fmt_num(a3.get('alpha'))} "
            f"+ {fmt_num(a3.get('B'))} / D^{fmt_num(a3.get('beta'))}"
        )
        a = f"{fmt_num(a3.get('a'))}{fmt_ci(a3.get('a_interval'))}"
        chinchilla = fmt_num(s.get("chinchilla_a"))
        rows += [
            ["approach 3: parametric law", law],
            ["α (parameters)", fmt_num(a3.get("alpha")) + fmt_ci(a3.get("alpha_interval"))],
            ["β (tokens)", fmt_num(a3.get("beta")) + fmt_ci(a3.get("beta_interval"))],
            ["a = β / (α + β): N* ∝ C^a", f"{a} (Chinchilla: {chinchilla})"],
        ]
    if a2:
        a = f"{fmt_num(a2.get('a'))}{fmt_ci(a2.get('a_interval'))}"
        budgets = len(a2.get("minima") or [])
        rows.append(["approach 2: IsoFLOP minima, N* ∝ C^a", f"a = {a}, {budgets} budgets"])
    if opt:
        where = (
            f"N {fmt_count(opt.get('n_opt'))} parameters, D {fmt_count(opt.get('d_opt'))} tokens "
            f"({fmt_num(opt.get('tokens_per_param'))} tokens/parameter), "
            f"loss {fmt_num(opt.get('loss'))}"
        )
        rows.append([f"predicted optimum at {fmt_num(opt.get('flops'))} FLOPs", where])
    out = [("h3", f"Fit `{r.name}` ({len(s.get('runs') or [])} runs)"), ("kv", rows)]
    out += [("note", clip_text(str(n), 300)) for n in s.get("notes") or []]
    # an unpinned floor makes every extrapolation shaky
    if is_number(a3.get("E")) and a3["E"] < 1e-3:
        floor = (
            "E, the irreducible loss, sits at its bound 0: these runs do not pin down the law's "
            "floor, so its exponents and the predicted optimum are extrapolations to read with "
            "care."
        )
        out.append(("note", floor))
    caption = f"{r.name}: loss against N and D, with the law"
    out += copy_figure(ctx, f"scaling-{r.name}-law", r.path / "law.png", caption)
    caption = f"{r.name}: IsoFLOP curves and the optimum"
    return out + copy_figure(ctx, f"scaling-{r.name}-isoflop", r.path / "isoflop.png", caption)
