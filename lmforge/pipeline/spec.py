"""A pipeline file read: its stages (each command line parsed by the registry), the inputs
each stage reads, and the cache key of each (its command line, the fingerprints of what it
reads, its inputs' keys, lmforge's version and, in a development checkout, its source)."""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import shlex
import string
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from pydantic import Field

import lmforge
from lmforge import verbs
from lmforge.config import Section, read_yaml, validate
from lmforge.errors import ConfigError
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


def inside(path: str, parent: str) -> bool:
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


def _inputs(
    name: str,
    texts: list[str],
    outs: list[tuple[str, str]],
    moved_outs: list[tuple[str, str]],
    where: str,
) -> tuple[list[str], dict[str, str]]:
    """The stages whose outputs a stage's strings point into, and the fingerprints of the other
    existing paths it names."""
    needs: list[str] = []
    external: dict[str, str] = {}
    for text in dict.fromkeys(t for t in texts if not t.startswith("-")):
        producer = next((n for n, o in outs if inside(text, o)), None)
        if producer is not None:
            if producer != name and producer not in needs:  # (its own output is not an input)
                needs.append(producer)
            continue
        stale = next((n for n, o in moved_outs if inside(text, o)), None)
        if stale is not None:
            raise ConfigError(
                f"{where} reads {text} (in its command line or config), written by stage "
                f"'{stale}' under the default vars, but this profile moves that stage's output. "
                "Name the input in the stage's run line with the variable, e.g. `key=${runs}/...`."
            )
        # A directory that holds other stages' outputs (the run root) is not an input.
        holds = any(inside(o, text) for _, o in outs)
        if not holds and ("/" in text or "." in text) and os.path.exists(text):
            external[text] = fingerprint(text)
    return needs, external


def load(
    path: str | os.PathLike, profile: str | None = None, variables: dict[str, str] | None = None
) -> Pipeline:
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
        return [
            (n, os.path.normpath(_substitute(o, vs, f"stage '{n}' out")))
            for n, s in spec.stages.items()
            for o in [s.out, *s.writes]
        ]

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
        found, external = _inputs(
            name,
            _strings(argv) + _strings(config or {}),
            current_outs,
            [(n, o) for n, o in default_outs if o in moved],
            where,
        )
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
