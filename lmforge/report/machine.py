"""The machine: hardware, versions and the git commit (`environment()`, which `lmforge run` stores
in pipeline.json), and the Environment section that shows them with the wall time per stage."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lmforge
from lmforge.report.context import Context, wall_time
from lmforge.report.figures import new_figure, save_figure
from lmforge.report.format import fmt_duration, fmt_plain, get_in


def environment() -> dict:
    """Hardware, versions and the git commit. `lmforge run` stores this in pipeline.json, so a
    report describes the machine the stages ran on, not the one it is read on."""
    env = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lmforge": lmforge.__version__,
    }
    for pkg in ("torch", "transformers", "numpy"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None  # transformers is optional
    try:
        import torch  # heavy, and may be broken: the other entries come first

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
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD"), bool(git("status", "--porcelain", "-uno"))
    except (OSError, subprocess.SubprocessError):  # no git, or an installed package
        return None, None


ENV_LABELS = {
    "cpu_model": "CPU",
    "logical_cores": "logical cores",
    "ram_gb": "RAM (GiB)",
    "torch_threads": "torch threads",
    "gpu": "GPU",
    "python": "Python",
    "git_commit": "git commit",
    "git_dirty": "uncommitted changes",
}


def environment_section(ctx: Context) -> list:
    env = get_in(ctx.pipeline, "environment")
    src = "Recorded by `lmforge run` when the pipeline ran."
    if not isinstance(env, dict) or not env:
        env, src = environment(), "Measured now, by the report (pipeline.json records none)."
    rows = [[ENV_LABELS.get(k, k), fmt_plain(v)] for k, v in env.items()]
    out = [("h2", "environment", "Environment"), ("p", src), ("kv", rows)]
    if p := ctx.pipeline:
        ran = (
            f"Pipeline `{p.get('name')}` from `{p.get('file')}`, profile "
            f"{p.get('profile') or 'none'}: started {p.get('started')}, finished "
            f"{p.get('finished') or 'not yet'}."
        )
        out.append(("p", ran))
    if timed := [(r.name, w, r.cached) for r in ctx.runs if (w := wall_time(r)) is not None]:
        fig, (ax,) = new_figure(height=0.8 + 0.22 * len(timed))
        colors = ["#9aa7b4" if cached else "#3b7dd8" for _, _, cached in timed]
        ax.barh([t[0] for t in timed][::-1], [t[1] / 60 for t in timed][::-1], color=colors[::-1])
        ax.set_xlabel("wall time (minutes)")
        ax.tick_params(axis="y", labelsize=7)
        cached = any(t[2] for t in timed)
        grey = " (grey: cached, skipped by the last `lmforge run`)" if cached else ""
        total = f"{fmt_duration(sum(t[1] for t in timed))} in all, over {len(timed)} stages{grey}."
        caption = "Wall time of the run behind each artifact"
        figure = save_figure(ctx, "environment-wall-time", fig, caption)
        out += [("h3", "Wall time per stage"), ("p", total), figure]
    return out
