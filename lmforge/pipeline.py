"""`lmforge run pipeline.yaml`: every stage in order, cached by content hash, resumable.

A pipeline file lists stages; each stage is one lmforge command line and the path it writes:

    name: demo
    vars: {runs: runs/demo, data: data}          # ${runs} and ${data} below
    stages:
      tokenizer:
        run: tokenizer train --data ${data}/default --vocab-size 8192 --out ${runs}/tokenizer
        out: ${runs}/tokenizer
      pretrain:
        run: pretrain --config configs/demo/pretrain.yaml out_dir=${runs}/pretrain tokenizer=${runs}/tokenizer
        out: ${runs}/pretrain
    profiles:
      quick:                                     # lmforge run FILE --profile quick
        vars: {runs: runs/demo-quick}
        args: {pretrain: trainer.max_steps=20}   # appended to that stage's command line

What a stage consumes is read from its command line and its resolved config (the YAML file
plus the overrides): any path inside another stage's `out` makes that stage an input (`needs:`
adds what cannot be seen, e.g. a stage that scans a whole directory). Any other existing file
or directory it names (a config file, a label map, your own data) is fingerprinted.

A stage's key is the hash of its command line, those fingerprints, the keys of its inputs and
lmforge's version (in a development checkout also a hash of lmforge's source, since code there
changes without a new version), so a change anywhere upstream, or an upgrade, changes every key
below it. `lmforge run` skips a stage whose key
matches the one recorded when it last finished and whose output still exists; it runs the
rest in order. A stage interrupted mid-way keeps its checkpoints and resumes from them when run
again with the same key; with a different key its stale checkpoints are removed first, so a
changed recipe never continues an old run. The record is RUNS/pipeline.json (written
atomically after every stage), which the report card also reads.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import functools
import hashlib
import json
import os
import shlex
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

import lmforge
from lmforge import verbs
from lmforge.config import Section, read_yaml, validate
from lmforge.errors import ConfigError
from lmforge.eval.estimate import calibrate, estimate, model_from_config
from lmforge.report import environment
from lmforge.train.checkpoint import checkpoint_dir
from lmforge.train.device import cpu_precision
from lmforge.utils import read_json, write_json
from lmforge.verbs.options import Call


class StageSpec(Section):
    run: str  # an lmforge command line without the leading `lmforge`
    out: str  # the file or directory it writes (its existence means the stage finished)
    writes: list[str] = Field(default_factory=list)  # other paths it writes (e.g. a report)
    needs: list[str] = Field(default_factory=list)  # inputs its command line does not name
    optional: bool = False  # run only when asked for (`--with NAME` or `--only NAME`)
    about: str = ""


class Profile(Section):
    vars: dict[str, str] = Field(default_factory=dict)
    args: dict[str, str] = Field(default_factory=dict)  # stage -> extra command-line text
    about: str = ""


class PipelineFile(Section):
    name: str
    about: str = ""
    vars: dict[str, str] = Field(default_factory=dict)
    stages: dict[str, StageSpec]
    profiles: dict[str, Profile] = Field(default_factory=dict)


@dataclass
class Stage:
    name: str
    argv: list[str]
    out: str
    needs: list[str]  # every input stage, explicit and inferred, in pipeline order
    optional: bool
    about: str
    config: dict | None  # the recipe as its file and command line give it (--config verbs)
    call: Call  # the command line as the registry reads it: verb, flags, resolved recipe
    external: dict[str, str] = field(default_factory=dict)  # path -> fingerprint
    key: str = ""

    @property
    def verb(self) -> str:
        return self.call.verb.name


@dataclass
class Pipeline:
    name: str
    file: str
    profile: str | None
    vars: dict[str, str]
    stages: list[Stage]

    @property
    def root(self) -> Path:
        return Path(self.vars.get("runs", f"runs/{self.name}"))

    @property
    def state_path(self) -> Path:
        return self.root / "pipeline.json"

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(
            f"no stage '{name}' in {self.file}{_did_you_mean(name, [s.name for s in self.stages])}"
        )


# -- loading -----------------------------------------------------------------------------------


def _substitute(text: str, variables: dict[str, str], where: str) -> str:
    try:
        return string.Template(text).substitute(variables)
    except KeyError as e:
        raise ConfigError(
            f"{where} uses ${{{e.args[0]}}}, which is not defined; define it under `vars:` "
            f"(defined: {', '.join(variables) or 'none'})"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{where}: {e} (write a literal $ as $$)") from None


def _parse(argv: list[str], where: str) -> Call:
    """A stage's command line as the CLI would read it (lmforge/verbs/): refused here, at
    load time, when it would be refused when the stage runs."""
    try:
        return verbs.parse(argv)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _strings(obj) -> list[str]:
    """Every string in a config, and the value side of `key=value` strings (sweep overrides)."""
    if isinstance(obj, str):
        return [obj, obj.split("=", 1)[1]] if "=" in obj else [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in _strings(v)]
    return []


def _inside(path: str, parent: str) -> bool:
    p, q = os.path.normpath(path), os.path.normpath(parent)
    return p == q or p.startswith(q.rstrip("/") + "/")


def fingerprint(path: str) -> str:
    """Content hash of a small file; size and modification time of big files and directories
    (hashing a 45 MB corpus on every `lmforge run` would cost more than the check saves)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file() and p.stat().st_size <= 8 << 20:
        h.update(p.read_bytes())
    else:
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                st = f.stat()
                h.update(
                    f"{f.relative_to(p) if p.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode()
                )
    return h.hexdigest()[:16]


def _inputs(name: str, texts: list[str], outs: list[tuple[str, str]],
            moved_outs: list[tuple[str, str]], where: str) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The stages whose outputs a stage's strings point into, and the fingerprints of the other
    existing paths it names."""
    needs: list[str] = []
    external: dict[str, str] = {}
    for text in dict.fromkeys(t for t in texts if not t.startswith("-")):
        producer = next((n for n, o in outs if _inside(text, o)), None)
        if producer is not None:
            if producer != name and producer not in needs:  # (its own output is not an input)
                needs.append(producer)
            continue
        stale = next((n for n, o in moved_outs if _inside(text, o)), None)
        if stale is not None:
            raise ConfigError(
                f"{where} reads {text} (in its command line or config), written by stage "
                f"'{stale}' under the default vars, but this profile moves that stage's output. "
                "Name the input in the stage's run line with the variable, e.g. `key=${runs}/...`."
            )
        # A directory that holds other stages' outputs (the run root) is not an input.
        holds = any(_inside(o, text) for _, o in outs)
        if not holds and ("/" in text or "." in text) and os.path.exists(text):
            external[text] = fingerprint(text)
    return needs, external


def load(path: str | os.PathLike, profile: str | None = None,
         variables: dict[str, str] | None = None) -> Pipeline:  # fmt: skip
    """Read a pipeline file, apply a profile and `--var` values, and wire the stages."""
    spec = validate(PipelineFile, read_yaml(path), str(path))
    if profile is not None and profile not in spec.profiles:
        raise ConfigError(
            f"{path} has no profile '{profile}'; profiles: {', '.join(spec.profiles) or 'none'}"
        )
    chosen = spec.profiles[profile] if profile else Profile()
    for name in chosen.args:
        if name not in spec.stages:
            raise ConfigError(
                f"profile '{profile}' in {path} gives args to unknown stage "
                f"'{name}'{_did_you_mean(name, spec.stages)}"
            )
    defaults = dict(spec.vars)
    current = {**defaults, **chosen.vars, **(variables or {})}

    def outs(vs):  # (stage, path) for every path a stage writes
        return [(n, os.path.normpath(_substitute(o, vs, f"stage '{n}' out")))
                for n, s in spec.stages.items() for o in [s.out, *s.writes]]  # fmt: skip

    default_outs, current_outs = outs(defaults), outs(current)
    moved = {d for (_, d), (_, c) in zip(default_outs, current_outs, strict=True) if d != c}
    stages: list[Stage] = []
    for name, s in spec.stages.items():
        where = f"stage '{name}' in {path}"
        line = _substitute(s.run, current, where)
        extra = _substitute(chosen.args.get(name, ""), current, where)
        argv = shlex.split(line) + shlex.split(extra)
        if argv and argv[0] == "lmforge":
            argv = argv[1:]
        if not argv:
            raise ConfigError(f"{where} has an empty `run:` line")
        call = _parse(argv, where)
        config = call.raw_config
        for n in s.needs:
            if n not in spec.stages:
                raise ConfigError(
                    f"{where} needs unknown stage '{n}'{_did_you_mean(n, spec.stages)}"
                )
        found, external = _inputs(name, _strings(argv) + _strings(config or {}), current_outs,
                                  [(n, o) for n, o in default_outs if o in moved], where)  # fmt: skip
        needs = list(dict.fromkeys([*s.needs, *found]))
        out = os.path.normpath(_substitute(s.out, current, where))
        stages.append(Stage(name, argv, out, needs, s.optional, s.about, config, call, external))
    graph = {s.name: s.needs for s in stages}
    cycle = _find_cycle(graph)
    if cycle:
        flow = cycle[::-1]  # in the direction data flows: each stage feeds the next
        links = ", ".join(f"'{b}' reads the output of '{a}'" for a, b in zip(flow, flow[1:]))
        raise ConfigError(
            f"{path}: the stages {' -> '.join(repr(n) for n in flow)} form a cycle ({links}), "
            "so none of them can run first. Remove one of these inputs: a `needs:` entry, or "
            "a path in the stage's run line or config"
        )
    order = list(spec.stages)
    for s in stages:
        for n in s.needs:
            if order.index(n) >= order.index(s.name):
                raise ConfigError(
                    f"stage '{s.name}' in {path} consumes '{n}', which comes after it; list "
                    "stages in the order they run"
                )
        s.needs.sort(key=order.index)
    by_name = {s.name: s for s in stages}
    for s in stages:  # in order, so every input's key is known
        blob = {
            "argv": s.argv,
            "external": s.external,
            "inputs": {n: by_name[n].key for n in s.needs},
            # Results of other code are not these results: the version, and in a checkout
            # (where code changes without a version bump) the source itself.
            "lmforge": lmforge.__version__,
            "source": source_hash(),
        }
        s.key = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    return Pipeline(spec.name, str(path), profile, current, stages)


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; stages: {', '.join(choices)}"


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in stage -> inputs as [a, b, ..., a] (each needs the next), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in graph.get(n, []):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in graph:
        if n not in state and (found := visit(n)):
            return found
    return None


def _is_development_checkout(package_dir: Path) -> bool:
    """Code that can change without a new version number: a git checkout, an editable
    install, or a source tree that was not installed at all (not a wheel in site-packages)."""
    if (package_dir.parent / ".git").exists():
        return True
    try:
        from importlib import metadata

        dist = metadata.distribution("lmforge")
    except Exception:  # not installed: run from a source tree
        return True
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        return True
    return Path(dist.locate_file("lmforge")).resolve() != package_dir.resolve()


@functools.lru_cache(maxsize=1)
def source_hash() -> str | None:
    """A hash of lmforge's own .py files in a development checkout (None in an installed
    release, where the version says it). Once per process: about a megabyte to read."""
    package_dir = Path(lmforge.__file__).resolve().parent
    if not _is_development_checkout(package_dir):
        return None
    h = hashlib.sha256()
    for f in sorted(package_dir.rglob("*.py")):
        h.update(f"{f.relative_to(package_dir)}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


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


def select(p: Pipeline, only: list[str] = (), start: str | None = None,
           with_optional: list[str] = ()) -> list[Stage]:  # fmt: skip
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
        row = {"stage": s.name, "verb": s.verb, "status": st, "action": action,
               "needs": s.needs, "out": s.out, "key": s.key}  # fmt: skip
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
    upstream = next((u for u in p.stages if init and _inside(init, u.out)), None)
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


def run(p: Pipeline, runner: Callable[[list[str]], int] = subprocess_runner, only: list[str] = (),
        start: str | None = None, with_optional: list[str] = (), force: bool = False,
        echo: Callable[[str], None] = print) -> dict:  # fmt: skip
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
                echo(f"[{s.name}] note: its input '{n}' is not up to date ({status(p, p.stage(n), state)}) "
                     "and is not part of this run; the existing output is used")  # fmt: skip
    state.update(name=p.name, file=p.file, profile=p.profile, vars=p.vars,
                 environment=environment(), started=_now())  # fmt: skip
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
            "verb": s.verb, "argv": s.argv, "out": s.out, "needs": s.needs, "key": s.key,
            "status": "running", "started": _now(), "cached": False,
            "seconds": None, "previous_seconds": rec.get("seconds"),
        }  # fmt: skip
        state["stages"] = {
            n: state["stages"][n] for n in [x.name for x in p.stages] if n in state["stages"]
        }
        write_json(p.state_path, state)
        t = time.perf_counter()
        argv = list(s.argv)
        if st not in ("interrupted", "failed") and s.call.verb.trains:
            # Re-made by the pipeline: a verb that refuses to replace a finished run made under
            # another config is told to replace the stage's old run.
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
            echo(f"[{s.name}] interrupted after {seconds:.0f} s. Run the same command again: "
                 "finished stages are cached and this one resumes from its last checkpoint.")  # fmt: skip
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
        lines.append(f"{r['stage']:<22} {r['status']:<15} {r['action']:<6} {t:>10} {f:>9}  "
                     f"{', '.join(r['needs']) or '-'}")  # fmt: skip
    lines.append(f"to run: {sum(r['action'] == 'run' for r in rows)} of {len(rows)} stages, "
                 f"about {total_s / 60:.1f} min, {total_f:.1e} FLOPs "
                 "(times: the last run's where there is one, else FLOPs / this machine's "
                 "measured training rate, a lower bound)")  # fmt: skip
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
