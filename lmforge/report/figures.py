"""Figures: matplotlib's object API (no pyplot state); PNG bytes kept in the Context for both
outputs. Also the curves read from metrics.jsonl and the events that put a seam in them."""

from __future__ import annotations

import io
from pathlib import Path

from lmforge.report.context import Context, Run
from lmforge.report.format import is_number


def new_figure(ncols: int = 1, width: float = 7.0, height: float = 3.6):
    # matplotlib takes a while to import: only a report that draws pays for it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer without pyplot's global state (the labels measure text)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def save_figure(ctx: Context, name: str, fig, caption: str) -> tuple:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    ctx.figures[name] = buf.getvalue()
    return ("img", name, caption)


def copy_figure(ctx: Context, name: str, path: Path, caption: str) -> list:
    """A PNG a stage drew itself (a scaling law, near-duplicate clusters), inlined as it is."""
    try:
        ctx.figures[name] = path.read_bytes()
        return [("img", name, caption)]
    except OSError:
        return []


def metric_series(rows: list[dict], key: str, tokens: bool = False) -> tuple[list, list]:
    """(x, y) of one logged quantity against the step, or against millions of tokens seen
    (comparable across batch sizes); an eval logs no token count and takes its step's."""
    pts = [
        (r["step"], r[key])
        for r in rows
        if is_number(r.get(key)) and is_number(r.get("step")) and "event" not in r
    ]
    seen = {
        r["step"]: r["tokens_seen"]
        for r in rows
        if is_number(r.get("tokens_seen")) and is_number(r.get("step"))
    }
    if tokens and seen:
        last = max(seen)
        pts = [(seen.get(s, s * seen[last] / last) / 1e6, v) for s, v in pts]
    return [p[0] for p in pts], [p[1] for p in pts]


def label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Names next to scatter points, moved around a point until they overlap no other name and
    no point and stay inside the axes; a moved name gets a thin line to its point."""
    from matplotlib.transforms import Bbox  # as in new_figure: imported when drawing

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
            inside = (
                frame.x0 <= box.x0
                and box.x1 <= frame.x1
                and frame.y0 <= box.y0
                and box.y1 <= frame.y1
            )
            if inside and not any(box.overlaps(b) for b in placed):
                break
        line = None if (dx, dy) == spots[0] else {"arrowstyle": "-", "color": "#aaa", "lw": 0.5}
        ha = "left" if dx > 0 else "right"
        ax.annotate(name, (x, y), xytext=(dx, dy), ha=ha, arrowprops=line, **style)
        placed.append(box)


def run_events(ctx: Context, runs: list[Run]) -> list:
    """Resumes, loss spikes and rollbacks: a curve with a seam should say so."""
    seen = [
        f"{r.name}: {e['event'].replace('_', ' ')} at step {e.get('step')}"
        for r in runs
        if r.path
        for e in ctx.jsonl(r.path / "metrics.jsonl")
        if e.get("event") in ("resumed", "loss_spike", "rollback")
    ]
    return [("p", "Events in these runs: " + "; ".join(seen) + ".")] if seen else []
