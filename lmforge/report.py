"""The report card of a pipeline run: one Markdown file and one self-contained HTML file.

    lmforge report runs/demo --out runs/demo/report.html

What each stage did, read back from its artifacts: headline numbers (summary.json), curves
(metrics.jsonl, drawn here), transcripts, tables and the deployment recommendation. The stages
come from RUNS_DIR/pipeline.json when `lmforge run` wrote one (order, verbs, wall times), else
from RUNS_DIR's subdirectories. Every input is optional: a missing stage omits its section (the
report ends with the commands that make it) and a damaged file becomes a note at the top of the
report, never a traceback. The HTML inlines its plots as PNG data URIs and has no scripts and no
links out: one file to mail or archive. The same PNGs go to RUNS_DIR/report_figures/ for the
Markdown (and the README's gallery).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.utils import atomic_write_bytes, atomic_write_text

# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def environment() -> dict:
    """Hardware, versions and the git commit. `lmforge run` stores this in pipeline.json, so a
    report describes the machine the stages ran on, not the one it is read on."""
    from importlib.metadata import PackageNotFoundError, version

    import lmforge

    env = {"cpu_model": _cpu_model(), "logical_cores": os.cpu_count(), "ram_gb": _ram_gb(),
           "platform": platform.platform(), "python": platform.python_version(),
           "lmforge": lmforge.__version__}  # fmt: skip
    for pkg in ("torch", "transformers", "numpy"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None  # transformers is optional
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a broken torch still gets its report
        env["torch_threads"] = env["gpu"] = None
    env["git_commit"], env["git_dirty"] = _git()
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Hardware", "Model"):  # x86, ARM
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def _git() -> tuple[str | None, bool | None]:
    def git(*args: str) -> str:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()  # fmt: skip

    try:
        return git("rev-parse", "--short", "HEAD"), bool(git("status", "--porcelain", "-uno"))
    except (OSError, subprocess.SubprocessError):  # no git, or an installed package
        return None, None


# --------------------------------------------------------------------------------------------
# Finding the stages and reading their artifacts
# --------------------------------------------------------------------------------------------


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


# The file that says what a directory holds, tried in this order (None: summary.json's stage).
KNOWN_FILES = [("curation.json", "curation"), ("fit.json", "scaling-fit"),
               ("sweep.json", "scaling-sweep"), ("tradeoff.json", "tradeoff"),
               ("summary.json", None), ("stats.json", "data"), ("task.json", "task"),
               ("info.json", "instructions")]  # fmt: skip
KIND_ORDER = ["data", "curation", "tokenizer", "pretrain", "encoder", "midtrain", "instructions",
              "task", "sft", "reward", "dpo", "baseline-tfidf", "classify", "quantize", "lm-distill",
              "quantize-lm", "tradeoff", "scaling-sweep", "scaling-fit"]  # fmt: skip
VERB_KIND = {"tokenizer train": "tokenizer", "data curate": "curation", "classify train": "classify",
             "distill train": "classify", "baseline tfidf": "baseline-tfidf",
             "scaling sweep": "scaling-sweep", "scaling fit": "scaling-fit"}  # fmt: skip


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
            self.note(f"`{path}` could not be read ({type(e).__name__}: {e}); its numbers are left out.")  # fmt: skip
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
    stage = s.get("stage")
    if stage == "pretrain":  # one stage, three kinds of model
        return "encoder" if "val_masked_accuracy" in s else "lm-distill" if "distill" in s else "pretrain"  # fmt: skip
    if stage == "quantize" and "val_bpb" in s:
        return "quantize-lm"
    return str(stage) if stage else "tokenizer" if "bytes_per_token_heldout" in s else "unknown"


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
        c = (
            str(Path(c).parent) if c.endswith(".json") else c
        )  # `tradeoff` writes RUNS/tradeoff.json
        under = c.startswith(runs_var)
        for t in ([ctx.root / c.removeprefix(runs_var).lstrip("/")] if under else []) + [Path(c), ctx.root / Path(c).name]:  # fmt: skip
            if t.is_dir() and any((t / f).is_file() for f, _ in KNOWN_FILES):
                return t
    out = Path(str(stage.get("out") or "\0"))
    return out if out.is_dir() else None  # artifacts the report does not read (a logits cache)


def _find_runs(ctx: Context) -> None:
    scanned = [r for d in sorted(ctx.root.iterdir()) if d.is_dir() and not d.name.startswith(".")
               and d.name != "report_figures" and (r := _inspect(ctx, d, d.name))]  # fmt: skip
    p = ctx.json(ctx.root / "pipeline.json")
    if isinstance(p, dict) and isinstance(p.get("stages"), dict):
        ctx.pipeline = p
        for name, st in p["stages"].items():
            st = st if isinstance(st, dict) else {}
            verb = str(st.get("verb", ""))
            d = _stage_dir(ctx, st, p.get("vars") or {})
            run = (d and _inspect(ctx, d, name)) or Run(name, VERB_KIND.get(verb, verb), d)
            run.verb, run.status = verb, str(st.get("status", "?"))
            run.seconds, run.cached, run.error = st.get("seconds"), st.get("cached"), str(st.get("error", ""))  # fmt: skip
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


def _wall(run: Run) -> float | None:
    s = run.summary
    for v in (run.seconds, s.get("stage_seconds"), s.get("wall_seconds"), _get(s, "train.wall_seconds"),
              s.get("fit_seconds"), s.get("train_seconds"), _get(s, "seconds.total")):  # fmt: skip
        if _ok(v):
            return float(v)
    return None


# --------------------------------------------------------------------------------------------
# Values: safe nested reads; numbers to 3 significant digits, percentages, durations
# --------------------------------------------------------------------------------------------


def _get(d, path: str, default=None):
    """d["a"]["b"] for "a.b", or `default` when a step is missing or not a dict."""
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x) -> str:
    if not _ok(x):
        return "–" if x is None or isinstance(x, (int, float)) else str(x)
    if abs(x) >= 1e6:
        return re.sub(r"e\+?0*(\d)", r"e\1", f"{x:.3g}")  # 1.79e15
    if abs(x) >= 100 or isinstance(x, int) or x == 0:
        return f"{x:,.0f}"
    return f"{x:#.3g}".rstrip(".")


def _pct(x) -> str:
    return "–" if not _ok(x) else f"{100 * x:.2f}%" if 0 < abs(x) < 0.01 else f"{100 * x:.1f}%"


def _frac(a, b) -> float | None:
    return a / b if _ok(a) and _ok(b) and b else None


def _human(n) -> str:
    if not _ok(n):
        return "–"
    for unit in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def _dur(s) -> str:
    if not _ok(s):
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s // 60:.0f} min {s % 60:02.0f} s"
    return f"{s // 3600:.0f} h {s % 3600 // 60:02.0f} min"


def _arrow(a, b, f=_num) -> str:
    return f"{f(a)} → {f(b)}"


def _ci(v) -> str:
    return f" [{_num(v[0])}, {_num(v[1])}]" if isinstance(v, (list, tuple)) and len(v) == 2 else ""


def _pct_ci(v) -> str:
    """' [lo%, hi%]' for a 95% interval of a rate, or nothing when there is none."""
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_ok, v))):
        return ""
    return f" [{_pct(v[0])}, {_pct(v[1])}]"


def _delta(t) -> str:
    """A paired-bootstrap difference with its 95% interval."""
    lo, hi = _get(t, "ci95") or (math.nan, math.nan)
    return f"{_get(t, 'delta', math.nan):+.3f} [{lo:+.3f}, {hi:+.3f}]" if t else "–"


def _vs(value, reference) -> str:
    """A reference number and how far `value` moved from it: small changes stay visible."""
    return f"{_num(reference)} ({value - reference:+.2g})" if _ok(value) and _ok(reference) else _num(reference)  # fmt: skip


def _name(path) -> str:
    return Path(str(path)).name if path else "–"


def _clip(text: str, n: int = 360) -> str:
    return text if len(text) <= n else text[:n].rstrip() + " …"


def _plain(v) -> str:
    return "–" if v is None else ("yes" if v else "no") if isinstance(v, bool) else str(v)


# --------------------------------------------------------------------------------------------
# What a stage's artifacts say, shared by its headline and its section
# --------------------------------------------------------------------------------------------


def _cls_metrics(s: dict) -> tuple[dict, str]:
    """A classifier's held-out metrics: test when it was evaluated there (as tradeoff does)."""
    for split in ("test", "val"):
        if isinstance(s.get(split), dict) and "macro_f1" in s[split]:
            return s[split], split
    return s, "val"


def _classifiers(ctx: Context) -> list[Run]:
    runs = ctx.of("baseline-tfidf", "classify", "quantize")
    return [r for r in runs if _ok(_cls_metrics(r.summary)[0].get("macro_f1"))]


def _domains(s: dict) -> list[tuple[str, float, float]]:
    """(data, val bpb before, after) of a midtrain: the starting data, then each new domain."""
    b, a, out = s.get("before") or {}, s.get("after") or {}, []
    for k, v in a.items():
        name = k.removeprefix("val_bpb_")
        same = v == a.get("val_bpb_init") and b.get(k) == b.get("val_bpb_init")
        if name != k and (name == "init" or not same):  # a bpb, and not the start data renamed
            out.append(("start data" if name == "init" else name, b.get(k), v))
    return out


def _answers(ctx: Context, r: Run) -> dict:
    """SFT's held-out answers, scored before and after (answers.json), or the after half."""
    a = ctx.json(r.path / "answers.json") if r.path else None
    if isinstance(_get(a, "before"), dict) and isinstance(_get(a, "after"), dict):
        return a
    return {"before": {}, "after": r.summary.get("answers") or {}}


def _headline(ctx: Context, r: Run) -> str:
    s, k = r.summary, r.kind
    m, split = _cls_metrics(s)
    lines = {
        "tokenizer": lambda: f"{_num(s.get('bytes_per_token_heldout'))} bytes/token (held-out), vocab {_num(s.get('vocab_size'))}",
        "curation": lambda: f"{_pct(_frac(s.get('documents_out'), s.get('documents_in')))} of {_num(s.get('documents_in'))} documents kept",
        "pretrain": lambda: f"val bpb {_num(s.get('val_bpb'))}",
        "lm-distill": lambda: f"val bpb {_num(s.get('val_bpb'))} (teacher {_num(_get(s, 'distill.teacher_val_bpb'))})",
        "encoder": lambda: f"masked-token accuracy {_pct(s.get('val_masked_accuracy'))}",
        "midtrain": lambda: "val bpb " + "; ".join(f"{d} {_arrow(b, a)}" for d, b, a in _domains(s)),
        "reward": lambda: f"val accuracy {_arrow(_get(s, 'before.val_accuracy'), s.get('val_accuracy'), _pct)}",
        "dpo": lambda: f"reward accuracy {_pct(s.get('val_reward_accuracy'))}, win rate {_pct(s.get('win_rate_over_init'))}{_pct_ci(s.get('win_rate_ci95'))}",
        "classify": lambda: f"macro F1 {_num(m.get('macro_f1'))} ({split})",
        "baseline-tfidf": lambda: f"macro F1 {_num(m.get('macro_f1'))} ({split})",
        "quantize": lambda: f"macro F1 {_num(m.get('macro_f1'))} ({split}), {_num(s.get('checkpoint_mb'))} MB",
        "quantize-lm": lambda: f"val bpb {_num(s.get('val_bpb'))} ({_get(s, 'val_bpb_change', math.nan):+.2g}), {_num(s.get('checkpoint_mb'))} MB",
        "tradeoff": lambda: f"recommended: {s.get('recommended') or 'none within the limits'}",
        "scaling-fit": lambda: f"α {_num(_get(s, 'approach3.alpha'))}, β {_num(_get(s, 'approach3.beta'))} ({len(s.get('runs') or [])} runs)",
        "scaling-sweep": lambda: f"{len(s.get('runs') or [])} runs",
        "data": lambda: f"{_num(_get(s, 'total.documents'))} documents",
        "instructions": lambda: f"{_num(sum((_get(s, 'counts.train') or {}).values()))} conversations, {_num(sum((_get(s, 'counts.preferences-train') or {}).values()))} preference pairs",
        "task": lambda: f"{_num(s.get('num_labels'))} labels, {_num(_get(s, 'rows.train'))} training rows",
        "damaged": lambda: "could not be read (see the notes above)",
    }  # fmt: skip
    if not s:  # a stage that has not written its artifacts (yet), or wrote them elsewhere
        if r.kind == "damaged":
            return lines["damaged"]()
        return r.error or ("no artifacts found" if r.path is None else "–")
    if k == "sft":
        a = _answers(ctx, r)
        f1 = _arrow(_get(a, "before.token_f1"), _get(a, "after.token_f1"))
        return f"val loss {_num(s.get('val_loss'))}; answer token F1 {f1}"
    try:
        return lines[k]() if k in lines else "–"
    except (TypeError, ValueError):  # a number that is not one: the table goes on without it
        return "–"


# --------------------------------------------------------------------------------------------
# Figures: matplotlib's object API (no pyplot state); PNG bytes kept for both outputs
# --------------------------------------------------------------------------------------------


def _figure(ncols: int = 1, width: float = 7.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer without pyplot's global state (the labels measure text)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _save(ctx: Context, name: str, fig, caption: str) -> tuple:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    ctx.figures[name] = buf.getvalue()
    return ("img", name, caption)


def _copy(ctx: Context, name: str, path: Path, caption: str) -> list:
    """A PNG a stage drew itself (a scaling law, near-duplicate clusters), inlined as it is."""
    try:
        ctx.figures[name] = path.read_bytes()
        return [("img", name, caption)]
    except OSError:
        return []


def _series(rows: list[dict], key: str, tokens: bool = False) -> tuple[list, list]:
    """(x, y) of one logged quantity against the step, or against millions of tokens seen
    (comparable across batch sizes); an eval logs no token count and takes its step's."""
    pts = [(r["step"], r[key]) for r in rows if _ok(r.get(key)) and _ok(r.get("step")) and "event" not in r]  # fmt: skip
    seen = {r["step"]: r["tokens_seen"] for r in rows if _ok(r.get("tokens_seen")) and _ok(r.get("step"))}  # fmt: skip
    if tokens and seen:
        last = max(seen)
        pts = [(seen.get(s, s * seen[last] / last) / 1e6, v) for s, v in pts]
    return [p[0] for p in pts], [p[1] for p in pts]


def _label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Names next to scatter points, moved around a point until they overlap no other name and
    no point and stay inside the axes; a moved name gets a thin line to its point."""
    from matplotlib.transforms import Bbox

    ax.margins(x=0.08, y=0.1)
    ax.figure.draw_without_rendering()  # settles the layout: display coordinates are final
    renderer, frame = ax.figure.canvas.get_renderer(), ax.get_window_extent()
    dots = [ax.transData.transform((x, y)) for x, y, _ in points]
    placed = [Bbox.from_extents(px - 4, py - 4, px + 4, py + 4) for px, py in dots]
    spots = [(side * 6, dy) for dy in (2, -10, 12, -20, 22, -30, 32) for side in (1, -1)]
    style = {"textcoords": "offset points", "fontsize": 6.5, "va": "center", "color": "#333"}
    for x, y, name in sorted(points, key=lambda p: -p[1]):
        for dx, dy in spots:  # measured without the leader line, which is not in the way
            t = ax.annotate(
                name, (x, y), xytext=(dx, dy), ha="left" if dx > 0 else "right", **style
            )
            box = t.get_window_extent(renderer)
            t.remove()
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1  # fmt: skip
            if inside and not any(box.overlaps(b) for b in placed):
                break
        line = None if (dx, dy) == spots[0] else {"arrowstyle": "-", "color": "#aaa", "lw": 0.5}
        ax.annotate(name, (x, y), xytext=(dx, dy), ha="left" if dx > 0 else "right", arrowprops=line, **style)  # fmt: skip
        placed.append(box)


def _events(ctx: Context, runs: list[Run]) -> list:
    """Resumes, loss spikes and rollbacks: a curve with a seam should say so."""
    seen = [f"{r.name}: {e['event'].replace('_', ' ')} at step {e.get('step')}"
            for r in runs if r.path for e in ctx.jsonl(r.path / "metrics.jsonl")
            if e.get("event") in ("resumed", "loss_spike", "rollback")]  # fmt: skip
    return [("p", "Events in these runs: " + "; ".join(seen) + ".")] if seen else []


# --------------------------------------------------------------------------------------------
# Sections: each returns its blocks (the first is its title), or [] when it has nothing to show
# --------------------------------------------------------------------------------------------


def _cards(ctx: Context) -> list[tuple[str, str, str]]:
    """The numbers a reader looks for first, one per stage, from the stage's main run."""
    cards, main = [], ctx.main
    if r := main("tokenizer"):
        s, vocab = r.summary, f"held-out text, vocab {_num(r.summary.get('vocab_size'))}"
        cards.append(("tokenizer bytes/token", _num(s.get("bytes_per_token_heldout")), vocab))
    if r := main("curation"):
        s = r.summary
        kept = _pct(_frac(s.get("documents_out"), s.get("documents_in")))
        cards.append(("curation kept", kept, f"of {_num(s.get('documents_in'))} documents"))
    if r := main("pretrain"):
        cards.append(("pre-training val bpb", _num(r.summary.get("val_bpb")), r.name))
    if r := main("encoder"):
        cards.append(
            ("encoder masked accuracy", _pct(r.summary.get("val_masked_accuracy")), r.name)
        )
    if (r := main("midtrain")) and (dom := _domains(r.summary)):
        name, before, after = dom[-1]  # the new domain when there is one
        cards.append(("mid-training val bpb", _arrow(before, after), f"{r.name}, {name}"))
    if r := main("sft"):
        cards.append(("SFT val loss", _num(r.summary.get("val_loss")), r.name))
    if r := main("reward"):
        s, start = r.summary, _pct(_get(r.summary, "before.val_accuracy"))
        cards.append(
            ("reward model accuracy", _pct(s.get("val_accuracy")), f"{r.name}, from {start}")
        )
    if r := main("dpo"):
        s, acc = r.summary, _pct(r.summary.get("val_reward_accuracy"))
        cards.append(
            (
                "DPO win rate",
                _pct(s.get("win_rate_over_init")) + _pct_ci(s.get("win_rate_ci95")),
                f"{r.name}, n {_num(s.get('win_rate_n'))}, reward accuracy {acc}",
            )
        )
    if runs := _classifiers(ctx):
        best = max(runs, key=lambda r: _cls_metrics(r.summary)[0]["macro_f1"])
        m, split = _cls_metrics(best.summary)
        cards.append(("best classifier macro F1", _num(m["macro_f1"]), f"{best.name} ({split})"))
    if (r := main("tradeoff")) and (rec := r.summary.get("recommended")):
        x = next((x for x in r.summary.get("runs") or [] if _get(x, "run") == rec), {})
        where = f"{_num(x.get('latency_ms_p50'))} ms p50, {_num(x.get('checkpoint_mb'))} MB"
        cards.append(("recommended deployment", rec, where))
    return cards


def _summary(ctx: Context) -> list:
    pipe = ctx.pipeline is not None
    head = ["stage", "verb" if pipe else "kind", *(["status"] if pipe else []), "wall time", "headline"]  # fmt: skip
    rows = [[r.name, r.verb or r.kind, *([r.status + (" (cached)" if r.cached else "")] if pipe else []),
             _dur(_wall(r)), _headline(ctx, r)] for r in ctx.runs]  # fmt: skip
    why = ("Stages in the order `lmforge run` ran them; a wall time is that of the run that made "
           "the artifact." if pipe else "No pipeline.json: every run directory found, by kind.")  # fmt: skip
    out = [("h2", "summary", "Summary"), ("cards", _cards(ctx)), ("p", why), ("table", head, rows)]
    if ctx.others:  # earlier experiments in the same directory: named, not reported
        out.append(("p", f"Also under `{ctx.root}`, not stages of this pipeline and left out of this "
                         f"report: {', '.join(ctx.others)}."))  # fmt: skip
    return out


ENV_LABELS = {"cpu_model": "CPU", "logical_cores": "logical cores", "ram_gb": "RAM (GiB)",
              "torch_threads": "torch threads", "gpu": "GPU", "python": "Python",
              "git_commit": "git commit", "git_dirty": "uncommitted changes"}  # fmt: skip


def _environment(ctx: Context) -> list:
    env, src = _get(ctx.pipeline, "environment"), "Recorded by `lmforge run` when the pipeline ran."
    if not isinstance(env, dict) or not env:
        env, src = environment(), "Measured now, by the report (pipeline.json records none)."
    rows = [[ENV_LABELS.get(k, k), _plain(v)] for k, v in env.items()]
    out = [("h2", "environment", "Environment"), ("p", src), ("kv", rows)]
    if p := ctx.pipeline:
        out.append(("p", f"Pipeline `{p.get('name')}` from `{p.get('file')}`, profile "
                         f"{p.get('profile') or 'none'}: started {p.get('started')}, finished "
                         f"{p.get('finished') or 'not yet'}."))  # fmt: skip
    if timed := [(r.name, w, r.cached) for r in ctx.runs if (w := _wall(r)) is not None]:
        fig, (ax,) = _figure(height=0.8 + 0.22 * len(timed))
        colors = ["#9aa7b4" if cached else "#3b7dd8" for _, _, cached in timed]
        ax.barh([t[0] for t in timed][::-1], [t[1] / 60 for t in timed][::-1], color=colors[::-1])
        ax.set_xlabel("wall time (minutes)")
        ax.tick_params(axis="y", labelsize=7)
        grey = " (grey: cached, skipped by the last `lmforge run`)" if any(t[2] for t in timed) else ""  # fmt: skip
        total = f"{_dur(sum(t[1] for t in timed))} in all, over {len(timed)} stages{grey}."
        out += [("h3", "Wall time per stage"), ("p", total),
                _save(ctx, "environment-wall-time", fig, "Wall time of the run behind each artifact")]  # fmt: skip
    return out


def _tokenizer(ctx: Context) -> list:
    if not (r := ctx.main("tokenizer")):
        return []
    s = r.summary
    heldout = f"{_num(s.get('bytes_per_token_heldout'))} ({_num(s.get('heldout_documents'))} documents)"  # fmt: skip
    rows = [["vocabulary", _num(s.get("vocab_size"))], ["training documents", _num(s.get("documents"))],
            ["training bytes", _human(s.get("train_bytes"))],
            ["bytes/token, training text", _num(s.get("bytes_per_token_train"))],
            ["bytes/token, held-out text", heldout], ["training time", _dur(s.get("train_seconds"))],
            ["data", _plain(s.get("data"))]]  # fmt: skip
    special = " ".join(f"`{t}`" for t in s.get("special_tokens") or {})
    why = (f"Special tokens: {special}. Bits per byte (bpb) divide a model's loss by the bytes a "
           "token holds, so runs with different tokenizers compare on bpb, not on loss.")  # fmt: skip
    return [("h2", "tokenizer", "Tokenizer"), ("kv", rows), ("p", why)]


def _curation(ctx: Context) -> list:
    if not (r := ctx.main("curation")):
        return []
    s, steps, sources = r.summary, r.summary.get("steps") or [], r.summary.get("sources") or {}

    def kept(v: dict, unit: str = "documents") -> str:
        return _pct(_frac(v.get(f"{unit}_out"), v.get(f"{unit}_in")))

    text = (f"`{s.get('input')}` → `{s.get('output')}`: {_num(s.get('documents_in'))} documents in, "
            f"{_num(s.get('documents_out'))} out ({kept(s)} kept, {kept(s, 'characters')} of the "
            f"characters) in {_dur(_get(s, 'seconds.total'))}. A document is removed by the first "
            "step that rejects it.")  # fmt: skip
    rows = [[st.get("step"), _num(st.get("documents_in")), _num(st.get("documents_removed")),
             _pct(_frac(st.get("documents_removed"), st.get("documents_in"))),
             _num(st.get("documents_out")), _num(st.get("characters_removed"))] for st in steps]  # fmt: skip
    out = [("h2", "curation", "Curation"), ("p", text),
           ("table", ["step", "documents in", "removed", "share", "out", "characters removed"], rows)]  # fmt: skip
    names = [st.get("step") for st in steps]
    if sources:
        rows = [[src, _num(v.get("documents_in")), *(_num(_get(v, f"removed.{n}")) for n in names),
                 _num(v.get("documents_out")), kept(v)] for src, v in sources.items()]  # fmt: skip
        out += [("h3", "Removed, per source"), ("table", ["source", "in", *names, "out", "kept"], rows)]  # fmt: skip
    rules = list(dict.fromkeys(k for v in sources.values() for k in v.get("removed_by_filter") or {}))  # fmt: skip
    if rules:
        rows = [[rule, *(_num(_get(v, f"removed_by_filter.{rule}")) for v in sources.values())]
                for rule in rules]  # fmt: skip
        out += [("h3", "Quality rules: the documents each rule removed first"),
                ("table", ["rule", *sources], rows)]  # fmt: skip
    if nd := s.get("near_dedup"):
        out.append(("p", f"Near duplicates: MinHash LSH at Jaccard {nd.get('threshold')} "
                         f"({nd.get('bands')} bands × {nd.get('rows')} rows): "
                         f"{_num(nd.get('candidate_pairs'))} candidate pairs, "
                         f"{_num(nd.get('verified_pairs'))} verified, {_num(nd.get('clusters'))} "
                         f"clusters holding {_num(nd.get('documents_in_clusters'))} documents."))  # fmt: skip
    plot = r.path / "near_dup_clusters.png"
    return out + _copy(ctx, "curation-near-dup-clusters", plot, "Near-duplicate cluster sizes")


def _pretraining(ctx: Context) -> list:
    runs, small = ctx.of("pretrain", "encoder"), ctx.of("lm-distill", "quantize-lm")
    if not runs and not small:
        return []
    head = ["run", "objective", "params", "tokens", "epochs", "val loss", "val bpb", "masked acc",
            "tokens/s", "MFU", "precision", "wall time"]  # fmt: skip
    rows = [[r.name, "masked (encoder)" if r.kind == "encoder" else "next token",
             _human(s.get("params")), _human(s.get("tokens_seen")), _num(s.get("epochs")),
             _num(s.get("val_loss")), _num(s.get("val_bpb")), _pct(s.get("val_masked_accuracy")),
             _num(s.get("tokens_per_second")), _pct(s.get("mfu")), _plain(s.get("precision")),
             _dur(_wall(r))] for r in runs + ctx.of("lm-distill") for s in [r.summary]]  # fmt: skip
    out = [("h2", "pretraining", "Pre-training"), ("table", head, rows)]
    panels = [(title, rs) for title, rs in (("decoder: next-token loss", ctx.of("pretrain")),
                                            ("encoder: masked-token loss", ctx.of("encoder"))) if rs]  # fmt: skip
    if panels:
        fig, axes = _figure(len(panels), width=5.6 * len(panels), height=3.8)
        for ax, (title, rs) in zip(axes, panels):
            for i, r in enumerate(rs):
                rows = ctx.jsonl(r.path / "metrics.jsonl")
                ax.plot(*_series(rows, "loss", True), color=f"C{i}", lw=1, alpha=0.5, label=f"{r.name} train")  # fmt: skip
                ax.plot(*_series(rows, "val_loss", True), "o-", color=f"C{i}", ms=3, label=f"{r.name} val")  # fmt: skip
            ax.set(title=title, xlabel="tokens seen (millions)", ylabel="loss (nats/token)")
            ax.legend(fontsize=7)
        caption = "Training loss (thin) and held-out loss (dots), from metrics.jsonl"
        out += [_save(ctx, "pretraining-curves", fig, caption), *_events(ctx, runs)]
    if small:
        out += _small_lms(ctx, small)
    r = ctx.main("pretrain")
    if r and (samples := r.summary.get("samples") or ctx.jsonl(r.path / "samples.jsonl")):
        out.append(("h3", f"Samples from {r.name}"))
        out += [("sample", str(x.get("prompt", "")), str(x.get("completion", ""))) for x in samples[:4]]  # fmt: skip
    if (r := ctx.main("encoder")) and (samples := r.summary.get("samples")):
        rows = [[str(x.get("prompt")), "  ".join(map(repr, (x.get("guesses") or [[]])[0]))] for x in samples]  # fmt: skip
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
        rows.append([r.name, f"distilled (T {d.get('temperature')}, α {d.get('alpha')})" if d else _plain(s.get("method")),
                     _name(d.get("teacher") or s.get("source")), _human(s.get("params")), _num(s.get("checkpoint_mb")),
                     _num(s.get("val_bpb")), _vs(s.get("val_bpb"), d.get("teacher_val_bpb") or s.get("source_val_bpb")),
                     f"{twin.name}: {_num(twin.summary.get('val_bpb'))}" if twin else "–"])  # fmt: skip
    head = ["run", "method", "from", "params", "MB", "val bpb", "its source's (change)", "plain run, same size"]  # fmt: skip
    return [("h3", "Smaller language models: distilled and quantized"), ("table", head, rows)]


def _midtraining(ctx: Context) -> list:
    if not (runs := ctx.of("midtrain")):
        return []
    head = ["run", "context", "RoPE", "tokens", "val bpb before → after", "forgetting (bpb)",
            "loss past the old context", "tokens/s", "wall time"]  # fmt: skip
    rows = []
    for r in runs:
        s, c = r.summary, r.summary.get("context") or {}
        past = _get(s, "loss_by_position.beyond_old_context") or {}
        rows.append([r.name, f"{c.get('from')} → {c.get('to')}", f"{c.get('rope_scaling')}, θ {_num(c.get('rope_theta'))}",
                     _human(s.get("tokens_seen")), "; ".join(f"{d} {_arrow(b, a)}" for d, b, a in _domains(s)),
                     f"{_get(s, 'forgetting_bpb', math.nan):+.3f}", _arrow(past.get("before"), past.get("after")) if past else "–",
                     _num(s.get("tokens_per_second")), _dur(_wall(r))])  # fmt: skip
    why = ("Forgetting: the change of val bpb on the starting data (positive is worse). Loss past "
           "the old context: the mean next-token loss (nats) at the positions the starting model "
           "was never trained on, before → after.")  # fmt: skip
    out = [("h2", "midtraining", "Mid-training"), ("table", head, rows), ("p", why)]
    for r in runs:
        if isinstance(mix := r.summary.get("realised_mix"), dict):
            shares = ", ".join(f"{k} {_pct(_get(v, 'share'))}" for k, v in mix.items())
            out.append(("p", f"{r.name} realised mix: {shares} of the tokens."))
    fig, axes = _figure(2, width=11, height=3.6)
    for i, r in enumerate(runs):
        rows = ctx.jsonl(r.path / "metrics.jsonl")
        for d, b, _ in _domains(r.summary):  # step 0: the starting model, as the stage measured it
            ax = axes[0] if d == "start data" else axes[1]
            x, y = _series(rows, "val_bpb_init" if d == "start data" else f"val_bpb_{d}")
            ax.plot([0, *x], [b, *y], "o-", ms=3, color=f"C{i}", label=r.name if ax is axes[0] else f"{r.name}: {d}")  # fmt: skip
    axes[0].set(title="val bpb on the starting data", xlabel="step", ylabel="bits per byte")
    axes[1].set(title="val bpb on the new domains", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7) if ax.lines else ax.set_visible(False)
    caption = "Held-out bits per byte during mid-training (step 0: the starting model)"
    return out + [_save(ctx, "midtraining-curves", fig, caption), *_loss_by_position(ctx, runs)]


def _loss_by_position(ctx: Context, runs: list[Run]) -> list:
    import numpy as np

    curves = []
    for r in runs:
        if (path := r.path / "loss_by_position.npy").is_file():
            try:  # (2, positions): the loss before and after, at each position
                curves.append((r, np.load(path, allow_pickle=False)))
            except (OSError, ValueError) as e:
                ctx.note(f"`{path}` could not be read ({e}).")
    if not curves:
        return []
    w = max(1, curves[0][1].shape[1] // 16)  # a few dozen documents: single positions are noise

    def smooth(c):
        return np.arange(len(c) - w + 1) + w / 2, np.convolve(c, np.ones(w) / w, mode="valid")

    fig, (ax,) = _figure(width=8, height=3.8)
    ax.plot(*smooth(curves[0][1][0]), "--", color="grey", label="before (the starting model)")
    for i, (r, c) in enumerate(curves):
        ax.plot(*smooth(c[1]), color=f"C{i}", label=f"after {r.name}")
    if old := _get(curves[0][0].summary, "context.from"):
        ax.axvline(old, color="k", ls=":", lw=1, label=f"old context ({old})")
    ax.set(xlabel="token position in the document", ylabel="next-token loss (nats)",
           title="loss by position on held-out long documents")  # fmt: skip
    ax.legend(fontsize=7)
    caption = f"Loss by position ({w}-token moving average), from loss_by_position.npy"
    return [_save(ctx, "midtraining-loss-by-position", fig, caption)]


def _posttraining(ctx: Context) -> list:
    sft, reward, dpo = ctx.of("sft"), ctx.of("reward"), ctx.of("dpo")
    if not (sft or reward or dpo):
        return []
    out = [("h2", "posttraining", "Post-training")]
    if sft:
        head = ["run", "from", "method", "steps", "train loss", "val loss", "answer token F1",
                "exact match", "wall time"]  # fmt: skip
        rows = [[r.name, _name(s.get("init")), _plain(s.get("method")), _num(s.get("steps")),
                 _num(s.get("final_train_loss")), _num(s.get("val_loss")),
                 _arrow(_get(a, "before.token_f1"), _get(a, "after.token_f1")),
                 _arrow(_get(a, "before.exact_match"), _get(a, "after.exact_match"), _pct), _dur(_wall(r))]
                for r in sft for s, a in [(r.summary, _answers(ctx, r))]]  # fmt: skip
        out += [("h3", "Supervised fine-tuning"), ("table", head, rows)]
    if reward:
        head = ["run", "from", "pairs (train / val)", "val accuracy", "val margin", "val loss", "wall time"]  # fmt: skip
        rows = [[r.name, _name(s.get("init")), f"{_num(s.get('train_pairs'))} / {_num(s.get('val_pairs'))}",
                 _arrow(b.get("val_accuracy"), s.get("val_accuracy"), _pct), _arrow(b.get("val_margin"), s.get("val_margin")),
                 _arrow(b.get("val_loss"), s.get("val_loss")), _dur(_wall(r))]
                for r in reward for s, b in [(r.summary, r.summary.get("before") or {})]]  # fmt: skip
        why = "Accuracy: how often the chosen answer of a held-out pair scores above the rejected one."
        out += [("h3", "Reward model"), ("table", head, rows), ("p", why)]
    if dpo:
        head = ["run", "from", "β", "val loss", "reward accuracy", "margin",
                "prefers chosen: reference → policy", "win rate", "wall time"]  # fmt: skip
        rows = [[r.name, _name(s.get("init")), _num(s.get("beta")), _arrow(b.get("val_loss"), s.get("val_loss")),
                 _pct(s.get("val_reward_accuracy")), _num(s.get("val_margin")),
                 _arrow(s.get("val_reference_prefers_chosen"), s.get("val_policy_prefers_chosen"), _pct),
                 _pct(s.get("win_rate_over_init")), _dur(_wall(r))]
                for r in dpo for s, b in [(r.summary, r.summary.get("before") or {})]]  # fmt: skip
        why = ("Reward accuracy and margin use DPO's implicit reward on held-out pairs; the win rate "
               "is how often the reward model prefers the policy's answer to its starting model's.")  # fmt: skip
        out += [("h3", "Direct preference optimisation"), ("table", head, rows), ("p", why)]
    out.append(_posttraining_curves(ctx, sft, reward, dpo))
    if (r := ctx.main("sft")) and _get(_answers(ctx, r), "before.by_task"):
        out += _sft_answers(ctx, r, _answers(ctx, r))
    if r := ctx.main("dpo"):
        out += _dpo_transcripts(ctx, r)
    return out


def _posttraining_curves(ctx: Context, sft: list, reward: list, dpo: list) -> tuple:
    panels = [p for p in (("SFT loss", sft, "loss", "val_loss"),
                          ("reward model: val accuracy", reward, None, "val_accuracy"),
                          ("DPO: val reward accuracy", dpo, None, "val_reward_accuracy")) if p[1]]  # fmt: skip
    fig, axes = _figure(len(panels), width=4.2 * len(panels) + 1, height=3.4)
    for ax, (title, runs, train_key, val_key) in zip(axes, panels):
        for i, r in enumerate(runs):
            rows = ctx.jsonl(r.path / "metrics.jsonl")
            if train_key:
                ax.plot(*_series(rows, train_key), color=f"C{i}", lw=1, alpha=0.5, label=f"{r.name} train")  # fmt: skip
            ax.plot(*_series(rows, val_key), "o-", color=f"C{i}", ms=3, label=f"{r.name} val")
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=7)
    return _save(ctx, "posttraining-curves", fig, "Post-training curves, from metrics.jsonl")


def _sft_answers(ctx: Context, r: Run, ans: dict) -> list:
    """Token F1 per task before and after SFT, and a held-out conversation for each of 3 tasks."""
    tasks = list(_get(ans, "after.by_task") or {})
    fig, (ax,) = _figure(width=7, height=3.2)
    for j, (when, color) in enumerate((("before", "#9aa7b4"), ("after", "#2e7d32"))):
        f1 = [_get(ans, f"{when}.by_task.{t}.token_f1", 0) for t in tasks]
        ax.bar([i + (j - 0.5) * 0.38 for i in range(len(tasks))], f1, 0.38, color=color, label=f"{when} SFT")  # fmt: skip
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(ylabel="token F1 against the reference", title=f"{r.name}: held-out answers by task")
    ax.legend(fontsize=8, loc="upper left")
    out = [_save(ctx, "posttraining-sft-by-task", fig, "Answer quality by task (answers.json)")]
    before = {
        t.get("user"): t for t in _get(ans, "before.transcripts") or [] if isinstance(t, dict)
    }
    picks, tasks_shown = [], set()
    for t in _get(ans, "after.transcripts") or []:
        if isinstance(t, dict) and t.get("task") not in tasks_shown and len(picks) < 3:
            picks.append(t)
            tasks_shown.add(t.get("task"))
    if picks:
        out.append(("h3", f"Held-out questions, before and after SFT ({r.name})"))
    for t in picks:
        old = (before.get(t.get("user")) or {}).get("answer", "–")
        out.append(("chat", [("user", "user", str(t.get("user", ""))), ("before", "before SFT", _clip(str(old))),
                             ("after", f"after SFT · token F1 {_num(t.get('token_f1'))}", _clip(str(t.get("answer", "")))),
                             ("reference", "reference answer", str(t.get("reference", "")))]))  # fmt: skip
    return out


def _dpo_transcripts(ctx: Context, r: Run) -> list:
    """One prompt where the reward model preferred the DPO answer and one where it did not."""
    wr = ctx.json(r.path / "win_rate.json")
    ts = [t for t in _get(wr, "transcripts") or [] if isinstance(t, dict)
          and _ok(t.get("policy_reward")) and _ok(t.get("baseline_reward"))]  # fmt: skip
    picks = [t for t in ts if t["policy_reward"] > t["baseline_reward"]][:1]
    picks += [t for t in ts if t["policy_reward"] < t["baseline_reward"]][:1]
    if not picks:
        return []
    out = [("h3", f"DPO against its starting model, judged by the reward model ({r.name}: "
                  f"win rate {_pct(wr.get('win_rate'))}{_pct_ci(wr.get('ci95'))} over "
                  f"{wr.get('n')} prompts)")]  # fmt: skip
    for t in picks:
        out.append(("chat", [("user", "user", str(t.get("user", ""))),
                             ("before", f"starting model · reward {_num(t['baseline_reward'])}", _clip(str(t.get("baseline", "")))),
                             ("after", f"DPO policy · reward {_num(t['policy_reward'])}", _clip(str(t.get("policy", ""))))]))  # fmt: skip
    return out


def _classification(ctx: Context) -> list:
    if not (runs := _classifiers(ctx)):
        return []
    runs = sorted(runs, key=lambda r: -_cls_metrics(r.summary)[0]["macro_f1"])
    ms = [_cls_metrics(r.summary)[0] for r in runs]
    tiers = list(dict.fromkeys(t for m in ms for t in m.get("tier_macro_f1") or {}))
    head = ["run", "base", "method", "trainable", "accuracy", "macro F1", *(f"{t} F1" for t in tiers),
            "ECE → after T", "p50 ms", "MB"]  # fmt: skip
    rows = [[r.name, _name(str(s.get("source") or s.get("init") or "").removeprefix("pkg:")),
             _plain(s.get("method")) + (" + distilled" if s.get("distill") else ""),
             _human(s.get("params_trainable")), _num(m.get("accuracy")), _num(m.get("macro_f1")),
             *(_num(_get(m, f"tier_macro_f1.{t}")) for t in tiers), _arrow(m.get("ece"), m.get("ece_after_temperature")),
             _num(s.get("latency_ms_p50")), _num(s.get("checkpoint_mb"))]
            for r, m in zip(runs, ms) for s in [r.summary]]  # fmt: skip
    splits = " / ".join(sorted({_cls_metrics(r.summary)[1] for r in runs}))
    why = (f"Metrics on the {splits} split, best macro F1 first. A tier column is the macro F1 over "
           "the labels of one frequency tier (head: the most frequent in training); ECE is before → "
           "after temperature scaling; latency is one example at a time (p50); MB: the checkpoint.")  # fmt: skip
    out = [("h2", "classification", "Classification"), ("p", why), ("table", head, rows)]
    fig, (ax,) = _figure(width=8, height=1 + 0.3 * len(runs))
    names = [r.name for r in runs][::-1]
    ax.barh(names, [m["macro_f1"] for m in ms][::-1], color="#cfd8e3", label="macro F1")
    for j, t in enumerate(tiers):
        f1 = [_get(m, f"tier_macro_f1.{t}", math.nan) for m in ms][::-1]
        ax.plot(f1, names, "o", ms=5, color=f"C{j}", label=f"{t} F1")
    ax.set(xlabel="F1", xlim=(0, 1), title="macro F1 (bars) and macro F1 per frequency tier (dots)")
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=7, loc="lower right")
    caption = "Where each classifier's quality comes from: frequent labels or rare ones"
    return out + [_save(ctx, "classification-tiers", fig, caption), *_comparisons(ctx, tiers)]


def _comparisons(ctx: Context, tiers: list[str]) -> list:
    """The paired bootstraps `lmforge compare` left in RUNS_DIR (compare-*.json)."""
    rows = []
    for f in sorted(ctx.root.glob("compare-*.json")):
        c = ctx.json(f)
        if isinstance(d := _get(c, "macro_f1_difference_a_minus_b"), dict):
            rows.append([f"{_name(c.get('a'))} − {_name(c.get('b'))}", _plain(c.get("split")),
                         _num(c.get("examples")), _delta(d.get("overall")), _num(_get(d, "overall.p_a_not_better")),
                         *(f"{_get(d, f'{t}.delta', math.nan):+.3f}" for t in tiers)])  # fmt: skip
    head = ["a − b", "split", "examples", "Δ macro F1 [95% CI]", "P(a not better)", *(f"Δ {t}" for t in tiers)]  # fmt: skip
    if not rows:
        return []
    return [("h3", "Paired bootstrap comparisons (compare-*.json)"), ("table", head, rows)]


def _frontier(points: list[dict], key: str) -> list[dict]:
    """The runs no other run beats on both macro F1 (higher) and `key` (lower)."""

    def beaten(p, o):
        return o["macro_f1"] >= p["macro_f1"] and o[key] <= p[key] and (o["macro_f1"], -o[key]) != (p["macro_f1"], -p[key])  # fmt: skip

    return [p for p in points if not any(o is not p and beaten(p, o) for o in points)]


def _tradeoff(ctx: Context) -> list:
    if not (r := ctx.main("tradeoff")):
        return []
    s, ok, rec = r.summary, set(r.summary.get("meets_limits") or []), r.summary.get("recommended")
    runs = [x for x in s.get("runs") or [] if isinstance(x, dict) and _ok(x.get("macro_f1"))]
    runs.sort(key=lambda x: -x["macro_f1"])
    limits = {k: v for k, v in (s.get("limits") or {}).items() if v is not None}
    keys = ("latency_ms_p50", "latency_ms_p95", "throughput_per_s", "peak_memory_mb", "checkpoint_mb")  # fmt: skip
    head = ["run", "method", "macro F1", "tail F1", "accuracy", "ECE → after T", "p50 ms", "p95 ms",
            "per s", "peak MB", "size MB", "Pareto", "within limits"]  # fmt: skip
    rows = [[x.get("run"), _plain(x.get("method")), _num(x["macro_f1"]), _num(x.get("tail_f1")),
             _num(x.get("accuracy")), _arrow(x.get("ece"), x.get("ece_after_temperature")),
             *(_num(x.get(k)) for k in keys), "yes" if x.get("pareto") else "",
             "yes" if x.get("run") in ok else ""] for x in runs]  # fmt: skip
    lim = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in limits.items()) or "none"
    out = [("h2", "tradeoff", "Trade-off"),
           ("p", f"Every classifier on the {s.get('split')} split. Limits: {lim}."),
           ("callout", f"**Recommended: {rec or 'none'}**. {str(s.get('reason', ''))[:1].upper()}{str(s.get('reason', ''))[1:]}."),
           ("table", head, rows), _pareto_plot(ctx, runs, limits, rec)]  # fmt: skip
    if dmg := [d for d in s.get("damage") or [] if isinstance(d, dict)]:
        tiers = list(dict.fromkeys(t for d in dmg for t in d.get("tiers") or {}))
        rows = [
            [d.get("run"), d.get("source"), *(_delta(_get(d, f"tiers.{t}")) for t in tiers)]
            for d in dmg
        ]
        out += [("h3", "What compression cost (macro F1, compressed − source, 95% interval)"),
                ("table", ["run", "source", *tiers], rows)]  # fmt: skip
    changed = []  # tradeoff.json is a snapshot: say when a run was measured again after it
    for x in runs:
        now = ctx.json(r.path / str(x.get("run")) / "summary.json") or {}
        moved = [k for k in ("latency_ms_p50", "checkpoint_mb") if _ok(now.get(k)) and _ok(x.get(k))
                 and not math.isclose(now[k], x[k], rel_tol=1e-6)]  # fmt: skip
        if moved:
            changed.append(
                f"{x['run']} (" + ", ".join(f"{k} {_arrow(x[k], now[k])}" for k in moved) + ")"
            )
    if changed:
        out.append(("note", f"tradeoff.json is older than the summaries of {'; '.join(changed)}: run "
                            f"`lmforge tradeoff {r.path}` again to refresh this table and the pick."))  # fmt: skip
    return out


def _pareto_plot(ctx: Context, runs: list[dict], limits: dict, rec: str | None) -> tuple:
    fig, axes = _figure(2, width=11.5, height=4.6)
    for ax, key, label, limit in ((axes[0], "latency_ms_p50", "latency p50, one example (ms)", limits.get("max_latency_ms")),
                                  (axes[1], "checkpoint_mb", "size on disk (MB)", limits.get("max_size_mb"))):  # fmt: skip
        pts = [x for x in runs if _ok(x.get(key))]
        front = sorted(_frontier(pts, key), key=lambda x: x[key])
        best = [x for x in pts if x["run"] == rec]
        ax.scatter(
            [x[key] for x in pts], [x["macro_f1"] for x in pts], s=26, color="#4c78a8", zorder=3
        )
        ax.plot([x[key] for x in front], [x["macro_f1"] for x in front], "o--", color="#d62728",
                ms=7, lw=1, zorder=4, label="Pareto frontier")  # fmt: skip
        ax.scatter([x[key] for x in best], [x["macro_f1"] for x in best], s=320, marker="*",
                   facecolor="none", edgecolor="#e6a700", lw=1.6, zorder=5, label="recommended")  # fmt: skip
        if limit:
            ax.axvline(limit, color="grey", ls=":", lw=1, label="limit")
        if limits.get("min_macro_f1"):
            ax.axhline(limits["min_macro_f1"], color="grey", ls=":", lw=1)
        ax.set(xlabel=label, ylabel="macro F1")
        ax.legend(fontsize=7, loc="lower right")
        _label_points(ax, [(x[key], x["macro_f1"], x["run"]) for x in pts])
    caption = "Quality against speed and size. Red: the Pareto frontier; star: the pick; dotted: the limits"
    return _save(ctx, "tradeoff-pareto", fig, caption)


def _scaling(ctx: Context) -> list:
    fits, sweeps = ctx.of("scaling-fit"), ctx.of("scaling-sweep")
    if not fits and not sweeps:
        return []
    out = [("h2", "scaling", "Scaling")]
    for r in sweeps:  # what the sweep planned against what is on disk now
        cfg, dirs = r.summary.get("config") or {}, sorted(d for d in r.path.iterdir() if d.is_dir())
        listed = [_name(_get(x, "run")) for x in r.summary.get("runs") or []]
        done = [d.name for d in dirs if (d / "summary.json").is_file()]
        gone = [n for n in listed if n not in {d.name for d in dirs}]
        unfinished = [d.name for d in dirs if d.name not in done]
        grid = (f"FLOP budgets {', '.join(map(_num, cfg['budgets']))}" if cfg.get("budgets")
                else f"token counts {', '.join(map(_num, cfg.get('tokens') or []))}")  # fmt: skip
        out.append(("p", f"Sweep `{r.name}`: depths {cfg.get('depths')} × {grid}. sweep.json lists "
                         f"{len(listed)} runs; {len(done)} finished runs are on disk"
                         + (f"; missing from disk: {', '.join(gone)}" if gone else "")
                         + (f"; unfinished: {', '.join(unfinished)}" if unfinished else "") + "."))  # fmt: skip
    for r in fits:
        out += _fit(ctx, r)
    return out


def _fit(ctx: Context, r: Run) -> list:
    s = r.summary
    a3, a2, opt = s.get("approach3") or {}, s.get("approach2") or {}, s.get("predicted_optimum") or {}  # fmt: skip
    rows = []
    if a3:
        law = f"L = {_num(a3.get('E'))} + {_num(a3.get('A'))} / N^{_num(a3.get('alpha'))} + {_num(a3.get('B'))} / D^{_num(a3.get('beta'))}"  # fmt: skip
        rows += [["approach 3: parametric law", law],
                 ["α (parameters)", _num(a3.get("alpha")) + _ci(a3.get("alpha_interval"))],
                 ["β (tokens)", _num(a3.get("beta")) + _ci(a3.get("beta_interval"))],
                 ["a = β / (α + β): N* ∝ C^a", f"{_num(a3.get('a'))}{_ci(a3.get('a_interval'))} (Chinchilla: {_num(s.get('chinchilla_a'))})"]]  # fmt: skip
    if a2:
        rows.append(["approach 2: IsoFLOP minima, N* ∝ C^a", f"a = {_num(a2.get('a'))}{_ci(a2.get('a_interval'))}, {len(a2.get('minima') or [])} budgets"])  # fmt: skip
    if opt:
        rows.append([f"predicted optimum at {_num(opt.get('flops'))} FLOPs",
                     f"N {_human(opt.get('n_opt'))} parameters, D {_human(opt.get('d_opt'))} tokens "
                     f"({_num(opt.get('tokens_per_param'))} tokens/parameter), loss {_num(opt.get('loss'))}"])  # fmt: skip
    out = [("h3", f"Fit `{r.name}` ({len(s.get('runs') or [])} runs)"), ("kv", rows)]
    out += [("note", _clip(str(n), 300)) for n in s.get("notes") or []]
    if _ok(a3.get("E")) and a3["E"] < 1e-3:  # an unpinned floor makes every extrapolation shaky
        out.append(("note", "E, the irreducible loss, sits at its bound 0: these runs do not pin down "
                            "the law's floor, so its exponents and the predicted optimum are "
                            "extrapolations to read with care."))  # fmt: skip
    out += _copy(ctx, f"scaling-{r.name}-law", r.path / "law.png", f"{r.name}: loss against N and D, with the law")  # fmt: skip
    return out + _copy(ctx, f"scaling-{r.name}-isoflop", r.path / "isoflop.png", f"{r.name}: IsoFLOP curves and the optimum")  # fmt: skip


SECTIONS = [("summary", _summary), ("environment", _environment), ("tokenizer", _tokenizer),
            ("curation", _curation), ("pretraining", _pretraining), ("midtraining", _midtraining),
            ("posttraining", _posttraining), ("classification", _classification),
            ("tradeoff", _tradeoff), ("scaling", _scaling)]  # fmt: skip
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

# --------------------------------------------------------------------------------------------
# Rendering: the same blocks as HTML and as Markdown, every artifact string escaped
# --------------------------------------------------------------------------------------------

CSS = """
body{margin:0;background:#eef1f5;color:#1f2328;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 40px 64px;background:#fff;box-shadow:0 0 24px rgba(0,0,0,.06)}
h1{font-size:30px;margin:0 0 4px}h2{font-size:22px;margin:44px 0 10px;padding-bottom:6px;border-bottom:2px solid #e3e8ee}
h3{font-size:16px;margin:26px 0 8px;color:#24425f}.meta{color:#57606a;font-size:13px}
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f0f3f6;padding:1px 4px;border-radius:4px}
nav{margin:14px 0 8px;font-size:13px}nav a{display:inline-block;margin:2px 4px 2px 0;padding:3px 10px;border-radius:12px;background:#eef3fa;color:#1f5fa8;text-decoration:none}
.tw{overflow-x:auto;margin:8px 0 16px}table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid #e6eaef;text-align:left;vertical-align:top}td:first-child{white-space:nowrap}
th{background:#f3f6f9;font-weight:600;white-space:nowrap}td.n{text-align:right;white-space:nowrap}tbody tr:hover td{background:#f8fafc}
table.kv td:first-child{color:#57606a;padding-right:24px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(205px,1fr));gap:12px;margin:12px 0 18px}
.card{border:1px solid #e3e8ee;border-radius:10px;padding:10px 14px;background:linear-gradient(#fff,#f8fbff)}
.card .k{font-size:11px;letter-spacing:.05em;text-transform:uppercase;color:#57606a}
.card .v{font-size:21px;font-weight:650;color:#17589c;overflow-wrap:anywhere}.card .s{font-size:12px;color:#6e7781}
figure{margin:14px 0 22px}figure img{max-width:100%;border:1px solid #e6eaef;border-radius:8px}
figcaption{font-size:13px;color:#57606a;margin-top:4px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;margin:10px 0;font-size:14px}
.callout{background:#e9f6ec;border-left:4px solid #2e7d32;padding:10px 14px;margin:10px 0}
.chat{border:1px solid #e3e8ee;border-radius:10px;padding:8px 12px;margin:10px 0 14px;max-width:880px;background:#fcfdfe}
.msg{margin:6px 0;padding:7px 12px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:14px}
.who{display:block;font-size:11px;font-weight:600;letter-spacing:.04em;text-transform:uppercase;color:#57606a}
.user{background:#e3edfb;margin-right:18%}.before{background:#f1f2f4;margin-left:18%}.after{background:#e3f4e6;margin-left:18%}
.reference{border:1px dashed #c5ccd3;margin-left:18%;color:#444}
.sample{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;background:#f6f8fa;border-radius:8px;padding:8px 12px;margin:8px 0}
.sample b{color:#17589c}
"""
# A number, share, size or duration, alone or as "a → b" or "a [lo, hi]": aligned right.
NUMERIC = re.compile(
    r"[+\-−]?[\d.,]+(e-?\d+)?[%KMBT]?( (s|min \d+ s|h \d+ min))?( → .*| \[.*\])?|–"
)


def _inline(text: str) -> str:
    """HTML for the report's own sentences: escaped, then `code` and **bold**."""
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)


def _table_html(head: list | None, rows: list) -> str:
    """A table; without a header it is a key-value list (nothing aligned right)."""

    def td(v) -> str:
        right = head is not None and NUMERIC.fullmatch(str(v))
        return f'<td class="n">{html.escape(str(v))}</td>' if right else f"<td>{html.escape(str(v))}</td>"  # fmt: skip

    th = "<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr></thead>" if head else ""  # fmt: skip
    body = "".join("<tr>" + "".join(map(td, row)) + "</tr>" for row in rows)
    return f'<div class="tw"><table{"" if head else " class=kv"}>{th}<tbody>{body}</tbody></table></div>'  # fmt: skip


def _html(title: str, meta: str, blocks: list, figures: dict) -> str:
    esc, parts = html.escape, []
    for b in blocks:
        kind = b[0]
        if kind == "h2":
            parts.append(f'<h2 id="{b[1]}">{esc(b[2])}</h2>')
        elif kind == "h3":
            parts.append(f"<h3>{_inline(b[1])}</h3>")
        elif kind == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif kind in ("note", "callout"):
            parts.append(f'<div class="{kind}">{_inline(b[1])}</div>')
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "cards":
            parts.append('<div class="cards">' + "".join(
                f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(str(v))}</div>'
                f'<div class="s">{esc(str(s))}</div></div>' for k, v, s in b[1]) + "</div>")  # fmt: skip
        elif kind in ("table", "kv"):
            parts.append(_table_html(b[1], b[2]) if kind == "table" else _table_html(None, b[1]))
        elif kind == "img":
            data = base64.b64encode(figures[b[1]]).decode("ascii")
            parts.append(f'<figure><img alt="{esc(b[2])}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{esc(b[2])}</figcaption></figure>")  # fmt: skip
        elif kind == "chat":
            parts.append('<div class="chat">' + "".join(
                f'<div class="msg {role}"><span class="who">{esc(label)}</span>{esc(text)}</div>'
                for role, label, text in b[1]) + "</div>")  # fmt: skip
        elif kind == "sample":
            parts.append(f'<div class="sample"><b>{esc(b[1])}</b>{esc(b[2])}</div>')
    toc = "".join(f'<a href="#{b[1]}">{esc(b[2])}</a>' for b in blocks if b[0] == "h2")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f'<h1>{esc(title)}</h1><div class="meta">{_inline(meta)}</div><nav>{toc}</nav>\n'
            + "\n".join(parts) + "\n</main></body></html>\n")  # fmt: skip


def _md_text(text: str) -> str:
    """Markdown renders inline HTML: escape the report's sentences outside `code` spans."""
    parts = text.split("`")
    return "`".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))


def _md_cell(v) -> str:
    return html.escape(str(v), quote=False).replace("|", "\\|").replace("\n", "<br>")


def _md_quote(text: str) -> str:
    return html.escape(text, quote=False).replace("\n", "  \n> ")


def _md(title: str, meta: str, blocks: list, fig_ref) -> str:
    lines = [f"# {title}", "", _md_text(meta), ""]
    for b in blocks:
        kind = b[0]
        if kind in ("h2", "h3"):
            lines += [f"## {b[2]}" if kind == "h2" else f"### {_md_text(b[1])}", ""]
        elif kind in ("p", "note", "callout"):
            lines += [{"p": "", "note": "> **Note:** ", "callout": "> "}[kind] + _md_text(b[1]), ""]
        elif kind == "list":
            lines += [f"- {_md_text(i)}" for i in b[1]] + [""]
        elif kind == "cards":
            lines += [f"- **{k}**: {_md_cell(v)} ({_md_cell(s)})" for k, v, s in b[1]] + [""]
        elif kind in ("table", "kv"):
            head, rows = (b[1], b[2]) if kind == "table" else (["", ""], b[1])
            lines += ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{b[2]}]({fig_ref(b[1])})", "", f"*{b[2]}*", ""]
        elif kind == "chat":
            lines += ["\n>\n".join(f"> **{who}:** {_md_quote(text)}" for _, who, text in b[1]), ""]
        elif kind == "sample":
            lines += [f"> **{_md_quote(b[1])}**{_md_quote(b[2])}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


def build_report(runs_dir: str | os.PathLike, out_html: str | os.PathLike | None = None,
                 out_md: str | os.PathLike | None = None) -> dict:  # fmt: skip
    """Write the report card of a run directory as HTML and Markdown, and its figures as PNG
    files under RUNS_DIR/report_figures/. Returns the paths, the sections present and the notes
    about damaged inputs."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory: give the run directory of a pipeline (runs/demo)")  # fmt: skip
    out_html, out_md = Path(out_html or root / "report.html"), Path(out_md or root / "report.md")
    ctx = Context(root)
    _find_runs(ctx)
    blocks, present = [], []
    for name, section in SECTIONS:
        drawn = set(ctx.figures)
        try:
            part = section(ctx)
        except Exception as e:  # an artifact in a shape nobody expected costs its section only
            ctx.note(f"The {name} section could not be made from the artifacts ({type(e).__name__}: {e}).")  # fmt: skip
            part, ctx.figures = [], {k: v for k, v in ctx.figures.items() if k in drawn}
        blocks += part
        present += [name] if part else []
    missing = [f"{n}: `{cmd.replace('RUNS', str(root))}`" for n, cmd in PRODUCERS.items() if n not in present]  # fmt: skip
    if missing:
        blocks += [("h2", "missing", "Not in this run"), ("p", "Sections left out because no "
                   "artifact was found, and the commands that make them:"), ("list", missing)]  # fmt: skip
    blocks[1:1] = [("note", n) for n in ctx.notes]  # damaged inputs, before any number
    p = ctx.pipeline or {}
    title = f"Report card: {p.get('name') or root.resolve().name}"
    source = f"of pipeline `{p.get('name')}` (`{p.get('file')}`)" if p else "found in its directories"  # fmt: skip
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

    atomic_write_text(out_html, _html(title, meta, blocks, ctx.figures))
    atomic_write_text(out_md, _md(title, meta, blocks, fig_ref))
    headlines = {r.name: _headline(ctx, r) for r in ctx.runs}
    return {"html": str(out_html), "md": str(out_md), "sections": present, "figures": figures,
            "notes": ctx.notes, "headlines": headlines}  # fmt: skip
