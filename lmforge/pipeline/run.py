"""A loaded pipeline run: which stages to consider, which are cached, the plan, running each
stage as a subprocess (or in-process for tests) with pipeline.json written after every one,
and the plan as a table or a mermaid graph."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from lmforge.errors import ConfigError
from lmforge.eval.estimate import calibrate, estimate, model_from_config
from lmforge.pipeline.spec import Pipeline, Stage, inside
from lmforge.report import environment
from lmforge.train.checkpoint import checkpoint_dir
from lmforge.train.device import cpu_precision
from lmforge.utils import read_json, write_json

# -- planning ----------------------------------------------------------------------------------


def read_state(p: Pipeline) -> dict:
    if not p.state_path.exists():
        return {"stages": {}}
    try:
        state = read_json(p.state_path)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{p.state_path} is damaged ({e}); delete it to rebuild the record (every stage "
            "will run again)"
        ) from None
    state.setdefault("stages", {})
    return state


def select(
    p: Pipeline, only: list[str] = (), start: str | None = None, with_optional: list[str] = ()
) -> list[Stage]:
    """The stages a run considers: all non-optional ones, or `--only`, or from `--from` on."""
    for n in [*only, *with_optional, *([start] if start else [])]:
        p.stage(n)  # unknown names are errors
    if only:
        return [s for s in p.stages if s.name in only]
    names = [s.name for s in p.stages]
    first = names.index(start) if start else 0
    return [s for s in p.stages[first:] if not s.optional or s.name in with_optional]


def status(p: Pipeline, s: Stage, state: dict) -> str:
    """cached | new | changed | interrupted | failed | missing output."""
    rec = state["stages"].get(s.name)
    if rec is None:
        return "new"
    if rec.get("key") != s.key:
        return "changed"
    if rec.get("status") == "done":
        return "cached" if os.path.exists(s.out) else "missing output"
    return "interrupted" if rec.get("status") == "running" else rec.get("status", "new")


def plan(p: Pipeline, chosen: list[Stage], state: dict, force: bool = False) -> list[dict]:
    """One row per chosen stage: what `run` would do and why, with estimates."""
    rows = []
    for s in chosen:
        st = status(p, s, state)
        action = "run" if force or st != "cached" else "skip"
        rec = state["stages"].get(s.name, {})
        row = {
            "stage": s.name,
            "verb": s.verb,
            "status": st,
            "action": action,
            "needs": s.needs,
            "out": s.out,
            "key": s.key,
        }
        flops = stage_flops(p, s)
        if flops:
            row["flops"] = flops
        if rec.get("seconds") is not None:
            row["seconds_est"], row["basis"] = rec["seconds"], "last run"
        elif flops:
            row["seconds_est"] = flops / calibrate(cpu_precision().precision)
            row["basis"] = "FLOPs / measured rate"
        rows.append(row)
    return rows


def _model_of(p: Pipeline, s: Stage):
    """The ModelConfig a training stage trains: its recipe's, or, for `init:` an upstream stage
    that has not run yet, that stage's."""
    cfg = s.config or {}
    init = cfg.get("init")
    upstream = next((u for u in p.stages if init and inside(init, u.out)), None)
    if not cfg.get("preset") and upstream not in (None, s) and upstream.config is not None:
        return _model_of(p, upstream)
    return model_from_config(cfg, f"stage '{s.name}'")


def stage_flops(p: Pipeline, s: Stage) -> float | None:
    """Training FLOPs of a stage that trains a model for a known number of steps, by
    eval/estimate's accounting for its method; None when it cannot be told before running
    (e.g. steps set by epochs over data not yet built)."""
    cfg = s.call.cfg
    trainer = getattr(cfg, "trainer", None)
    if trainer is None:
        return None
    try:
        model = _model_of(p, s)
    except Exception:  # an estimate must never stop a run
        return None
    steps = trainer.max_steps if "max_steps" in trainer.model_fields_set else None
    if s.call.verb.name in ("classify train", "distill train"):
        n, batch = cfg.task.max_train_examples, cfg.batch_size
        if not n:
            return None
        steps = min(steps or 10**12, -(-int(n * cfg.epochs) // batch))
        seq, method, labels = cfg.task.max_length, cfg.method, 2
    else:
        if not steps:
            return None
        seq = getattr(getattr(cfg, "data", None), "seq_len", None) or model.max_seq_len
        batch = trainer.micro_batch_size * trainer.grad_accum_steps
        method, labels = "full", None
    try:  # (a classifier's head is a rounding error next to its backbone: any label count)
        flops = estimate(model, method, batch, seq, num_labels=labels)["flops_per_step"]
        return float(flops * steps)
    except Exception:
        return None


# -- running -----------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def subprocess_runner(argv: list[str]) -> int:
    """Run one lmforge command in its own process, as a user would type it.

    Its own process because a stage's measurements must be its own (peak memory is the
    process's high-water mark) and its memory goes back to the system when it ends."""
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", *argv])
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the stage too; a signal sent to this process alone
        # is passed on. Either way the stage saves nothing half-written and exits.
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            code = proc.wait()
    return 130 if code in (130, -signal.SIGINT) else code


def run(
    p: Pipeline,
    runner: Callable[[list[str]], int] = subprocess_runner,
    only: list[str] = (),
    start: str | None = None,
    with_optional: list[str] = (),
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run the chosen stages in order; returns the state written to RUNS/pipeline.json.

    `runner(argv) -> exit code` runs one lmforge command (tests pass a stand-in)."""
    chosen = select(p, only, start, with_optional)
    state = read_state(p)
    chosen_names = {s.name for s in chosen}
    for s in chosen:  # inputs left out of this run must already exist
        for n in s.needs:
            if n not in chosen_names and not os.path.exists(p.stage(n).out):
                raise ConfigError(
                    f"stage '{s.name}' needs '{n}' ({p.stage(n).out}), which does not exist; "
                    f"run it first (drop --only/--from, or add it to --only)"
                )
    for s in chosen:  # an input left out of this run but changed since it ran: say so
        for n in s.needs:
            if n not in chosen_names and status(p, p.stage(n), state) != "cached":
                echo(
                    f"[{s.name}] note: its input '{n}' is not up to date ({status(p, p.stage(n), state)}) "
                    "and is not part of this run; the existing output is used"
                )
    state.update(
        name=p.name,
        file=p.file,
        profile=p.profile,
        vars=p.vars,
        environment=environment(),
        started=_now(),
    )
    state.pop("finished", None)
    state["last_run"] = [s.name for s in chosen]
    for name, rec in state["stages"].items():
        rec["cached"] = name in state["last_run"] and rec.get("cached", False)
    stages_state = state["stages"]
    # Keep the record in pipeline order (the report reads it top to bottom).
    state["stages"] = {s.name: stages_state[s.name] for s in p.stages if s.name in stages_state}
    write_json(p.state_path, state)
    t_all = time.perf_counter()
    for s in chosen:
        st = status(p, s, state)
        if st == "cached" and not force:
            state["stages"][s.name]["cached"] = True
            echo(f"[{s.name}] cached ({s.key}): {s.out}")
            continue
        rec = state["stages"].get(s.name, {})
        ckpts = checkpoint_dir(s.out)
        if st not in ("interrupted", "failed") and ckpts.is_dir():
            # Only an interrupted run of this very recipe may continue from these; checkpoints
            # of another recipe (or of a run this record does not know) would mix two runs.
            shutil.rmtree(ckpts)
            echo(f"[{s.name}] removed checkpoints of a different run in {ckpts}")
        why = {"interrupted": "resuming", "cached": "forced"}.get(st, st)
        echo(f"[{s.name}] running ({why}): lmforge {shlex.join(s.argv)}")
        state["stages"][s.name] = {
            "verb": s.verb,
            "argv": s.argv,
            "out": s.out,
            "needs": s.needs,
            "key": s.key,
            "status": "running",
            "started": _now(),
            "cached": False,
            "seconds": None,
            "previous_seconds": rec.get("seconds"),
        }
        state["stages"] = {
            n: state["stages"][n] for n in [x.name for x in p.stages] if n in state["stages"]
        }
        write_json(p.state_path, state)
        t = time.perf_counter()
        argv = list(s.argv)
        options = s.call.verb.options
        refuses = s.call.verb.trains or (
            options is not None and "overwrite" in options.model_fields
        )
        if st not in ("interrupted", "failed") and refuses:
            # Re-made by the pipeline: a verb that refuses to replace a finished run (or a
            # curated corpus) made under another config is told to replace the stage's old one.
            argv.append("--overwrite")
        try:
            code = runner(argv)
        except KeyboardInterrupt:
            code = 130
        seconds = time.perf_counter() - t
        r = state["stages"][s.name]
        r["seconds"] = round(seconds, 2)
        r["finished"] = _now()
        if code == 0 and not os.path.exists(s.out):
            r["status"] = "failed"
            r["error"] = f"finished but did not write {s.out}; fix the stage's `out:`"
        else:
            r["status"] = "done" if code == 0 else ("running" if code == 130 else "failed")
        if r["status"] == "done":
            r.pop("previous_seconds", None)
        write_json(p.state_path, state)
        if code == 130:
            echo(
                f"[{s.name}] interrupted after {seconds:.0f} s. Run the same command again: "
                "finished stages are cached and this one resumes from its last checkpoint."
            )
            state["interrupted"] = s.name
            return state
        if r["status"] != "done":
            raise ConfigError(
                f"stage '{s.name}' failed (exit code {code}"
                + (f"; {r['error']}" if "error" in r else "")
                + f"). Fix it and run again: the {len(chosen) - chosen.index(s) - 1} stage(s) "
                "after it have not run; the ones before are cached."
            )
        echo(f"[{s.name}] done in {seconds:.1f} s")
    state["finished"] = _now()
    state["seconds"] = round(time.perf_counter() - t_all, 2)
    write_json(p.state_path, state)
    return state


def format_plan(rows: list[dict]) -> str:
    lines = [f"{'stage':<22} {'status':<15} {'action':<6} {'est. time':>10} {'FLOPs':>9}  needs"]
    total_s = total_f = 0.0
    for r in rows:
        secs = r.get("seconds_est")
        runs = r["action"] == "run"
        if runs:
            total_s += secs or 0
            total_f += r.get("flops", 0)
        t = "-" if secs is None else (f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min")
        f = f"{r['flops']:.1e}" if r.get("flops") else "-"
        lines.append(
            f"{r['stage']:<22} {r['status']:<15} {r['action']:<6} {t:>10} {f:>9}  "
            f"{', '.join(r['needs']) or '-'}"
        )
    lines.append(
        f"to run: {sum(r['action'] == 'run' for r in rows)} of {len(rows)} stages, "
        f"about {total_s / 60:.1f} min, {total_f:.1e} FLOPs "
        "(times: the last run's where there is one, else FLOPs / this machine's "
        "measured training rate, a lower bound)"
    )
    return "\n".join(lines)


def mermaid(p: Pipeline) -> str:
    """The stage graph as a Mermaid flowchart (GitHub renders it; the README's is this output)."""
    ident = {s.name: f"s{i}" for i, s in enumerate(p.stages)}
    needs = {s.name: s.needs for s in p.stages}
    ancestors: dict[str, set[str]] = {}
    for s in p.stages:  # in order: every input's ancestors are known
        ancestors[s.name] = set(s.needs).union(*(ancestors[n] for n in s.needs))
    lines = ["flowchart TB"]
    for s in p.stages:
        label = f"{s.name}<br/><small>{s.verb}</small>"
        shape = f'{ident[s.name]}(["{label}"])' if s.optional else f'{ident[s.name]}["{label}"]'
        lines.append(f"  {shape}")
    for s in p.stages:  # an input already reached through another input adds no arrow
        direct = [n for n in needs[s.name] if not any(n in ancestors[m] for m in needs[s.name])]
        lines += [f"  {ident[n]} --> {ident[s.name]}" for n in direct]
    return "\n".join(lines)
