"""Assembling the report: the sections in order, the commands that make the missing ones, the
notes about damaged inputs first, then both pages and the figures written out.

A section is a function of the Context that returns its blocks, the first its title
(("h2", id, title)), or [] when it has nothing to show. A block is a tuple the renderers know:
h2, h3, p, note, callout, list, cards, table, kv, img, chat, sample."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.report.classification import classification_section
from lmforge.report.context import Context, find_runs
from lmforge.report.curation import curation_section
from lmforge.report.headlines import headline
from lmforge.report.html import render_html
from lmforge.report.machine import environment_section
from lmforge.report.markdown import render_markdown
from lmforge.report.midtrain import midtraining_section
from lmforge.report.posttrain import posttraining_section
from lmforge.report.pretrain import pretraining_section
from lmforge.report.scaling import scaling_section
from lmforge.report.summary import summary_section
from lmforge.report.tokenizer import tokenizer_section
from lmforge.report.tradeoff import tradeoff_section
from lmforge.utils import atomic_write_bytes, atomic_write_text

SECTIONS = [
    ("summary", summary_section),
    ("environment", environment_section),
    ("tokenizer", tokenizer_section),
    ("curation", curation_section),
    ("pretraining", pretraining_section),
    ("midtraining", midtraining_section),
    ("posttraining", posttraining_section),
    ("classification", classification_section),
    ("tradeoff", tradeoff_section),
    ("scaling", scaling_section),
]
PRODUCERS = {  # what makes an absent section's artifacts (RUNS: the run directory)
    "tokenizer": "lmforge tokenizer train --data data/default --vocab-size 8192 --out RUNS/tokenizer",
    "curation": "lmforge data curate data/default --out data/curated --report RUNS/curation",
    "pretraining": "lmforge pretrain --config configs/demo/pretrain.yaml",
    "midtraining": "lmforge midtrain --config configs/demo/midtrain-context.yaml",
    "posttraining": "lmforge sft --config configs/demo/sft.yaml, then reward and dpo",
    "classification": "lmforge classify train --config configs/demo/classify-encoder-full.yaml",
    "tradeoff": "lmforge tradeoff RUNS --max-latency-ms 10 --min-macro-f1 0.4",
    "scaling": "lmforge scaling sweep --config configs/demo/scaling.yaml, then scaling fit",
}


def build_report(
    runs_dir: str | os.PathLike,
    out_html: str | os.PathLike | None = None,
    out_md: str | os.PathLike | None = None,
) -> dict:
    """Write the report card of a run directory as HTML and Markdown, and its figures as PNG
    files under RUNS_DIR/report_figures/. Returns the paths, the sections present and the notes
    about damaged inputs."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError(
            f"{root} is not a directory: give the run directory of a pipeline (runs/demo)"
        )
    out_html, out_md = Path(out_html or root / "report.html"), Path(out_md or root / "report.md")
    ctx = Context(root)
    find_runs(ctx)
    blocks, present = [], []
    for name, section in SECTIONS:
        drawn = set(ctx.figures)
        try:
            part = section(ctx)
        except Exception as e:  # an artifact in a shape nobody expected costs its section only
            why = f"{type(e).__name__}: {e}"
            ctx.note(f"The {name} section could not be made from the artifacts ({why}).")
            part, ctx.figures = [], {k: v for k, v in ctx.figures.items() if k in drawn}
        blocks += part
        present += [name] if part else []
    absent = [n for n in PRODUCERS if n not in present]
    missing = [f"{n}: `{PRODUCERS[n].replace('RUNS', str(root))}`" for n in absent]
    if missing:
        why = "Sections left out because no artifact was found, and the commands that make them:"
        blocks += [("h2", "missing", "Not in this run"), ("p", why), ("list", missing)]
    blocks[1:1] = [("note", n) for n in ctx.notes]  # damaged inputs, before any number
    p = ctx.pipeline or {}
    title = f"Report card: {p.get('name') or root.resolve().name}"
    source = "found in its directories"
    if p:
        source = f"of pipeline `{p.get('name')}` (`{p.get('file')}`)"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"Run directory `{root}`: {len(ctx.runs)} stages {source}. Written {when}."
    fig_dir, figures = root / "report_figures", []
    for name, data in ctx.figures.items():
        atomic_write_bytes(fig_dir / f"{name}.png", data)
        figures.append(str(fig_dir / f"{name}.png"))
    for old in fig_dir.glob("*.png"):
        if str(old) not in figures:
            old.unlink()  # a figure of a section that is gone would mislead the gallery

    def fig_ref(name: str) -> str:
        return Path(os.path.relpath(fig_dir / f"{name}.png", out_md.parent)).as_posix()

    atomic_write_text(out_html, render_html(title, meta, blocks, ctx.figures))
    atomic_write_text(out_md, render_markdown(title, meta, blocks, fig_ref))
    headlines = {r.name: headline(ctx, r) for r in ctx.runs}
    return {
        "html": str(out_html),
        "md": str(out_md),
        "sections": present,
        "figures": figures,
        "notes": ctx.notes,
        "headlines": headlines,
    }
