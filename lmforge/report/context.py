"""Finding the stages of a run directory and reading their artifacts: what each directory holds
(the file that says so, its kind), the order from pipeline.json when there is one, and the
Context the sections share (the runs, notes about damaged inputs, the figures drawn)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.report.format import get_in, is_number
from lmforge.stages.summaries import SCHEMAS, Summary


@dataclass
class Run:
    """One stage's output directory and what it says about itself."""

    name: str
    kind: str  # tokenizer, curation, pretrain, encoder, lm-distill, midtrain, ... or a verb
    path: Path | None
    summary: dict = field(default_factory=dict)
    verb: str = ""
    status: str = "done"
    seconds: float | None = None
    cached: bool | None = None
    error: str = ""  # why a pipeline stage failed, as `lmforge run` recorded it

    @property
    def typed(self) -> Summary:
        """The summary read through its stage's schema (stages/summaries.py), as written: a
        damaged value stays in place for the report to show rather than refuse."""
        return SCHEMAS.get(self.summary.get("stage"), Summary).lenient(self.summary)


# The file that says what a directory holds, tried in this order (None: summary.json's stage).
KNOWN_FILES = [
    ("curation.json", "curation"),
    ("fit.json", "scaling-fit"),
    ("sweep.json", "scaling-sweep"),
    ("tradeoff.json", "tradeoff"),
    ("summary.json", None),
    ("stats.json", "data"),
    ("task.json", "task"),
    ("info.json", "instructions"),
]
KIND_ORDER = [
    "data",
    "curation",
    "tokenizer",
    "pretrain",
    "encoder",
    "midtrain",
    "instructions",
    "task",
    "sft",
    "reward",
    "dpo",
    "baseline-tfidf",
    "classify",
    "quantize",
    "lm-distill",
    "quantize-lm",
    "tradeoff",
    "scaling-sweep",
    "scaling-fit",
]
VERB_KIND = {
    "tokenizer train": "tokenizer",
    "data curate": "curation",
    "classify train": "classify",
    "distill train": "classify",
    "baseline tfidf": "baseline-tfidf",
    "scaling sweep": "scaling-sweep",
    "scaling fit": "scaling-fit",
}


class Context:
    """What the sections share: the runs, notes about damaged inputs, the figures drawn."""

    def __init__(self, root: Path):
        self.root, self.runs, self.notes, self.figures = root, [], [], {}
        self.pipeline: dict | None = None
        self.others: list[str] = []  # run directories a pipeline.json does not list

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def json(self, path: Path):
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            self.note(
                f"`{path}` could not be read ({type(e).__name__}: {e}); its numbers are left out."
            )
            return None

    def jsonl(self, path: Path) -> list[dict]:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        rows = []
        for line in filter(str.strip, lines):
            try:
                rows.append(json.loads(line))
            except ValueError:  # a run killed mid-write leaves a torn last line
                self.note(f"`{path}`: damaged lines were skipped.")
        return [r for r in rows if isinstance(r, dict)]

    def of(self, *kinds: str) -> list[Run]:
        return [r for r in self.runs if r.kind in kinds]

    def main(self, kind: str) -> Run | None:
        """The run a headline quotes: the one named after its kind (`pretrain`), else the first."""
        runs = self.of(kind)
        return next((r for r in runs if r.name == kind), runs[0] if runs else None)


def _summary_kind(s: dict) -> str:
    """A summary.json's kind: its stage's variant, or a tokenizer's summary (it has no stage)."""
    if schema := SCHEMAS.get(s.get("stage")):
        return schema.lenient(s).variant()
    if stage := s.get("stage"):
        return str(stage)
    return "tokenizer" if "bytes_per_token_heldout" in s else "unknown"


def _inspect(ctx: Context, d: Path, name: str) -> Run | None:
    for fname, kind in KNOWN_FILES:
        if (d / fname).is_file():
            s = ctx.json(d / fname)
            if isinstance(s, dict):
                return Run(name, kind or _summary_kind(s), d, s)
            if s is not None:
                ctx.note(f"`{d / fname}` holds a {type(s).__name__}, not an object; ignored.")
            return Run(name, "damaged", d)
    return None


def _stage_dir(ctx: Context, stage: dict, variables: dict) -> Path | None:
    """Where a pipeline stage's artifacts are: `--report` (curation) or `out`, re-rooted at
    RUNS_DIR when it lies under the pipeline's `runs` (a moved or copied run directory reports its
    own artifacts), else as written, from the working directory."""
    argv = [str(a) for a in stage.get("argv") or []]
    cands = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--report"]
    runs_var = str(variables.get("runs") or "\0")
    for c in filter(None, [*cands, str(stage.get("out") or "")]):
        if c.endswith(".json"):  # `tradeoff` writes RUNS/tradeoff.json
            c = str(Path(c).parent)
        rerooted = (
            [ctx.root / c.removeprefix(runs_var).lstrip("/")] if c.startswith(runs_var) else []
        )
        for t in [*rerooted, Path(c), ctx.root / Path(c).name]:
            if t.is_dir() and any((t / f).is_file() for f, _ in KNOWN_FILES):
                return t
    out = Path(str(stage.get("out") or "\0"))
    return out if out.is_dir() else None  # artifacts the report does not read (a logits cache)


def find_runs(ctx: Context) -> None:
    scanned = [
        r
        for d in sorted(ctx.root.iterdir())
        if d.is_dir()
        and not d.name.startswith(".")
        and d.name != "report_figures"
        and (r := _inspect(ctx, d, d.name))
    ]
    p = ctx.json(ctx.root / "pipeline.json")
    if isinstance(p, dict) and isinstance(p.get("stages"), dict):
        ctx.pipeline = p
        for name, st in p["stages"].items():
            st = st if isinstance(st, dict) else {}
            verb = str(st.get("verb", ""))
            d = _stage_dir(ctx, st, p.get("vars") or {})
            run = (d and _inspect(ctx, d, name)) or Run(name, VERB_KIND.get(verb, verb), d)
            run.verb, run.status = verb, str(st.get("status", "?"))
            run.seconds, run.cached = st.get("seconds"), st.get("cached")
            run.error = str(st.get("error", ""))
            ctx.runs.append(run)
        listed = {r.path.resolve() for r in ctx.runs if r.path}
        ctx.others = [r.name for r in scanned if r.path.resolve() not in listed]
        return
    if p is not None:
        ctx.note(f"`{ctx.root / 'pipeline.json'}` lists no stages; the directories were scanned.")
    if here := _inspect(ctx, ctx.root, ctx.root.name):  # tradeoff.json, or RUNS_DIR is one run
        here.name = "tradeoff" if here.kind == "tradeoff" else here.name
        scanned.append(here)
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    ctx.runs = sorted(scanned, key=lambda r: (rank.get(r.kind, len(rank)), r.name))


def wall_time(run: Run) -> float | None:
    s = run.summary
    for v in (
        run.seconds,
        s.get("stage_seconds"),
        s.get("wall_seconds"),
        get_in(s, "train.wall_seconds"),
        s.get("fit_seconds"),
        s.get("train_seconds"),
        get_in(s, "seconds.total"),
    ):
        if is_number(v):
            return float(v)
    return None
