"""The Post-training section: SFT, the reward model and DPO, their curves, and held-out
conversations before and after."""

from __future__ import annotations

from lmforge.report.artifacts import read_answers
from lmforge.report.context import Context, Run, wall_time
from lmforge.report.figures import metric_series, new_figure, save_figure
from lmforge.report.format import (
    clip_text,
    fmt_arrow,
    fmt_duration,
    fmt_name,
    fmt_num,
    fmt_pct,
    fmt_pct_ci,
    fmt_plain,
    get_in,
    is_number,
)


def posttraining_section(ctx: Context) -> list:
    sft, reward, dpo = ctx.of("sft"), ctx.of("reward"), ctx.of("dpo")
    if not (sft or reward or dpo):
        return []
    out = [("h2", "posttraining", "Post-training")]
    if sft:
        head = [
            "run",
            "from",
            "method",
            "steps",
            "train loss",
            "val loss",
            "answer token F1",
            "exact match",
            "wall time",
        ]
        rows = [
            [
                r.name,
                fmt_name(s.get("init")),
                fmt_plain(s.get("method")),
                fmt_num(s.get("steps")),
                fmt_num(s.get("final_train_loss")),
                fmt_num(s.get("val_loss")),
                fmt_arrow(get_in(a, "before.token_f1"), get_in(a, "after.token_f1")),
                fmt_arrow(get_in(a, "before.exact_match"), get_in(a, "after.exact_match"), fmt_pct),
                fmt_duration(wall_time(r)),
            ]
            for r in sft
            for s, a in [(r.summary, read_answers(ctx, r))]
        ]
        out += [("h3", "Supervised fine-tuning"), ("table", head, rows)]
    if reward:
        head = [
            "run",
            "from",
            "pairs (train / val)",
            "val accuracy",
            "val margin",
            "val loss",
            "wall time",
        ]
        rows = [
            [
                r.name,
                fmt_name(s.get("init")),
                f"{fmt_num(s.get('train_pairs'))} / {fmt_num(s.get('val_pairs'))}",
                fmt_arrow(b.get("val_accuracy"), s.get("val_accuracy"), fmt_pct),
                fmt_arrow(b.get("val_margin"), s.get("val_margin")),
                fmt_arrow(b.get("val_loss"), s.get("val_loss")),
                fmt_duration(wall_time(r)),
            ]
            for r in reward
            for s, b in [(r.summary, r.summary.get("before") or {})]
        ]
        why = (
            "Accuracy: how often the chosen answer of a held-out pair scores above the rejected "
            "one."
        )
        out += [("h3", "Reward model"), ("table", head, rows), ("p", why)]
    if dpo:
        head = [
            "run",
            "from",
            "β",
            "val loss",
            "reward accuracy",
            "margin",
            "prefers chosen: reference → policy",
            "win rate",
            "wall time",
        ]
        rows = [
            [
                r.name,
                fmt_name(s.get("init")),
                fmt_num(s.get("beta")),
                fmt_arrow(b.get("val_loss"), s.get("val_loss")),
                fmt_pct(s.get("val_reward_accuracy")),
                fmt_num(s.get("val_margin")),
                fmt_arrow(
                    s.get("val_reference_prefers_chosen"),
                    s.get("val_policy_prefers_chosen"),
                    fmt_pct,
                ),
                fmt_pct(s.get("win_rate_over_init")),
                fmt_duration(wall_time(r)),
            ]
            for r in dpo
            for s, b in [(r.summary, r.summary.get("before") or {})]
        ]
        why = (
            "Reward accuracy and margin use DPO's implicit reward on held-out pairs; the win rate "
            "is how often the reward model prefers the policy's answer to its starting model's."
        )
        out += [("h3", "Direct preference optimisation"), ("table", head, rows), ("p", why)]
    out.append(_posttraining_curves(ctx, sft, reward, dpo))
    if (r := ctx.main("sft")) and get_in(read_answers(ctx, r), "before.by_task"):
        out += _sft_answers(ctx, r, read_answers(ctx, r))
    if r := ctx.main("dpo"):
        out += _dpo_transcripts(ctx, r)
    return out


def _posttraining_curves(ctx: Context, sft: list, reward: list, dpo: list) -> tuple:
    panels = [
        p
        for p in (
            ("SFT loss", sft, "loss", "val_loss"),
            ("reward model: val accuracy", reward, None, "val_accuracy"),
            ("DPO: val reward accuracy", dpo, None, "val_reward_accuracy"),
        )
        if p[1]
    ]
    fig, axes = new_figure(len(panels), width=4.2 * len(panels) + 1, height=3.4)
    for ax, (title, runs, train_key, val_key) in zip(axes, panels):
        for i, r in enumerate(runs):
            rows = ctx.jsonl(r.path / "metrics.jsonl")
            if train_key:
                train = metric_series(rows, train_key)
                ax.plot(*train, color=f"C{i}", lw=1, alpha=0.5, label=f"{r.name} train")
            val = metric_series(rows, val_key)
            ax.plot(*val, "o-", color=f"C{i}", ms=3, label=f"{r.name} val")
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=7)
    caption = "Post-training curves, from metrics.jsonl"
    return save_figure(ctx, "posttraining-curves", fig, caption)


def _sft_answers(ctx: Context, r: Run, ans: dict) -> list:
    """Token F1 per task before and after SFT, and a held-out conversation for each of 3 tasks."""
    tasks = list(get_in(ans, "after.by_task") or {})
    fig, (ax,) = new_figure(width=7, height=3.2)
    for j, (when, color) in enumerate((("before", "#9aa7b4"), ("after", "#2e7d32"))):
        f1 = [get_in(ans, f"{when}.by_task.{t}.token_f1", 0) for t in tasks]
        x = [i + (j - 0.5) * 0.38 for i in range(len(tasks))]
        ax.bar(x, f1, 0.38, color=color, label=f"{when} SFT")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(ylabel="token F1 against the reference", title=f"{r.name}: held-out answers by task")
    ax.legend(fontsize=8, loc="upper left")
    caption = "Answer quality by task (answers.json)"
    out = [save_figure(ctx, "posttraining-sft-by-task", fig, caption)]
    earlier = [t for t in get_in(ans, "before.transcripts") or [] if isinstance(t, dict)]
    before = {t.get("user"): t for t in earlier}
    picks, tasks_shown = [], set()
    for t in get_in(ans, "after.transcripts") or []:
        if isinstance(t, dict) and t.get("task") not in tasks_shown and len(picks) < 3:
            picks.append(t)
            tasks_shown.add(t.get("task"))
    if picks:
        out.append(("h3", f"Held-out questions, before and after SFT ({r.name})"))
    for t in picks:
        old = (before.get(t.get("user")) or {}).get("answer", "–")
        after = f"after SFT · token F1 {fmt_num(t.get('token_f1'))}"
        chat = [
            ("user", "user", str(t.get("user", ""))),
            ("before", "before SFT", clip_text(str(old))),
            ("after", after, clip_text(str(t.get("answer", "")))),
            ("reference", "reference answer", str(t.get("reference", ""))),
        ]
        out.append(("chat", chat))
    return out


def _dpo_transcripts(ctx: Context, r: Run) -> list:
    """One prompt where the reward model preferred the DPO answer and one where it did not."""
    wr = ctx.json(r.path / "win_rate.json")
    ts = [
        t
        for t in get_in(wr, "transcripts") or []
        if isinstance(t, dict)
        and is_number(t.get("policy_reward"))
        and is_number(t.get("baseline_reward"))
    ]
    picks = [t for t in ts if t["policy_reward"] > t["baseline_reward"]][:1]
    picks += [t for t in ts if t["policy_reward"] < t["baseline_reward"]][:1]
    if not picks:
        return []
    title = (
        f"DPO against its starting model, judged by the reward model ({r.name}: "
        f"win rate {fmt_pct(wr.get('win_rate'))}{fmt_pct_ci(wr.get('ci95'))} over "
        f"{wr.get('n')} prompts)"
    )
    out = [("h3", title)]
    for t in picks:
        before = f"starting model · reward {fmt_num(t['baseline_reward'])}"
        after = f"DPO policy · reward {fmt_num(t['policy_reward'])}"
        chat = [
            ("user", "user", str(t.get("user", ""))),
            ("before", before, clip_text(str(t.get("baseline", "")))),
            ("after", after, clip_text(str(t.get("policy", "")))),
        ]
        out.append(("chat", chat))
    return out
