"""A verb's command line, derived from its options model and its recipe class.

An options model is a pydantic model whose fields are the verb's flags: `--max-new-tokens`
from ``max_new_tokens: int = opt(100, "...")``, its type, default and help text in one
place. ``opt`` adds what a flag needs beyond a field: a positional argument, a short name, a
repeatable flag, or a recipe key the flag sets (``--task`` sets ``task.path``).
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from annotated_types import Ge
from pydantic import BaseModel, ConfigDict, Field

from lmforge.config import apply_overrides, load_config, read_yaml
from lmforge.errors import ConfigError
from lmforge.stages.summaries import Summary
from lmforge.utils import Ref


class Options(BaseModel):
    """A verb's flags (subclass it; each field is one flag or positional argument)."""

    model_config = ConfigDict(extra="forbid")


def opt(
    default: Any = ...,
    help: str = "",
    *,
    positional: bool = False,
    short: str = "",
    flag: str = "",
    metavar: str = "",
    repeat: bool = False,
    sets: str = "",
    **kw,
):
    """A field that is a flag. ``sets``: the recipe key the flag overrides (``--out`` ->
    ``out_dir``); ``repeat``: the flag may be given again (--stop a --stop b)."""
    cli = dict(
        positional=positional, short=short, flag=flag, metavar=metavar, repeat=repeat, sets=sets
    )
    return Field(default, description=help, json_schema_extra={"cli": cli}, **kw)


@dataclass
class Call:
    """One command line, understood: what `verb.run(call)` gets."""

    verb: Verb
    opts: Options | None  # the flags
    cfg: BaseModel | None  # the resolved recipe (file + overrides, validated)
    raw_config: dict | None = None  # the recipe before validation (what the file and line say)
    overwrite: bool = False
    print_config: bool = False


@dataclass(frozen=True)
class Verb:
    name: str  # "pretrain", "classify train"
    help: str  # one line in `lmforge --help`
    run: Callable[[Call], Any]  # -> a summary dict, a dict/list (JSON), a str, or an exit code
    description: str = ""  # `lmforge <verb> --help`: what it does, with examples
    options: type[Options] | None = None  # its flags
    config: Ref | None = None  # its recipe class: --config FILE key.sub=value ...
    default_config: str | None = None
    summary: type[Summary] | None = None  # what it writes to out_dir/summary.json
    trains: bool = False  # a run directory: resumed, or refused under another config
    data_parallel: bool = False  # runs under torchrun with the Trainer's data parallelism
    output: str = ""  # the flag or recipe key naming what it writes
    inputs: tuple[str, ...] = field(default_factory=tuple)  # flags/keys naming what it reads

    @property
    def recipe(self) -> type[BaseModel] | None:
        """The recipe class, imported now (the registry names it without importing it)."""
        return None if self.config is None else self.config.get()


def positive(kind: type, least: int) -> Callable[[str], Any]:
    """An argparse type: a number of at least ``least`` (argparse prints the message, exit 2)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind.__name__}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, got {value}")
        return value

    return parse


def _unwrap(annotation) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def add_options(p: argparse.ArgumentParser, model: type[Options]) -> None:
    for name, f in model.model_fields.items():
        cli = (f.json_schema_extra or {}).get("cli", {})
        kind, _ = _unwrap(f.annotation)
        kw: dict[str, Any] = {"help": f.description or None}
        if typing.get_origin(kind) is Literal:
            kw["choices"] = list(typing.get_args(kind))
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            kw["type"] = item
            if cli.get("repeat"):
                kw["action"] = "append"
            else:
                kw["nargs"] = "+"
        elif kind is bool:
            kw["action"] = "store_true"
        elif kind in (int, float):
            least = next((m.ge for m in f.metadata if isinstance(m, Ge)), None)
            kw["type"] = positive(kind, least) if least is not None else kind
        if cli.get("metavar"):
            kw["metavar"] = cli["metavar"]
        if cli.get("positional"):
            if not f.is_required():
                kw["nargs"] = "?"
                kw["default"] = f.default
            p.add_argument(name, **kw)
            continue
        names = [cli.get("flag") or "--" + name.replace("_", "-")]
        if cli.get("short"):
            names.append(cli["short"])
        if f.is_required():
            kw["required"] = True
        else:
            kw["default"] = None if kw.get("action") == "append" else f.default
        p.add_argument(*names, dest=name, **kw)


def add_verb_arguments(p: argparse.ArgumentParser, verb: Verb) -> None:
    if verb.options is not None:
        add_options(p, verb.options)
    if verb.config is not None:
        default = verb.default_config
        p.add_argument("--config", "-c", default=default, help=f"YAML recipe (default: {default})")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key.sub=value",
            help="override any config key, e.g. trainer.max_steps=50 model.n_layer=2 "
            "(values are YAML)",
        )
        p.add_argument(
            "--print-config", action="store_true", help="print the resolved config and exit"
        )
    if verb.trains:
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace a run out_dir already holds (finished, or interrupted under "
            "another config); without it such a run is refused",
        )


def make_call(verb: Verb, ns: argparse.Namespace) -> Call:
    """The parsed command line as a Call: flags validated, the recipe resolved."""
    values = vars(ns)
    opts, cfg, raw, overrides = None, None, None, []
    if verb.options is not None:
        mine = {k: values[k] for k in verb.options.model_fields if values.get(k) is not None}
        try:
            opts = verb.options.model_validate(mine)
        except ValueError as e:  # a rule between flags (e.g. one of two is required)
            raise ConfigError(f"`lmforge {verb.name}`: {_first_error(e)}") from None
        for name, f in verb.options.model_fields.items():
            sets = ((f.json_schema_extra or {}).get("cli") or {}).get("sets")
            if sets and values.get(name) is not None:
                overrides.append(f"{sets}={values[name]}")
    if verb.config is not None:
        path = values.get("config")
        if path and not os.path.exists(path):
            raise ConfigError(
                f"config file {path} does not exist (run from the repository root, or pass --config)"
            )
        overrides += values.get("overrides") or []
        cfg = load_config(verb.recipe, path, overrides)
        raw = _raw_config(path, overrides)
    return Call(
        verb, opts, cfg, raw, bool(values.get("overwrite")), bool(values.get("print_config"))
    )


def _raw_config(path: str | None, overrides: list[str]) -> dict:
    """The recipe as the file and the command line give it (no defaults filled in)."""
    return apply_overrides(read_yaml(path) if path else {}, overrides)


def _first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("ctx", {}).get("error") or first.get("msg"))
    return str(e)


def formatter(prog: str) -> argparse.HelpFormatter:
    """Help as written (descriptions keep their line breaks and examples), 100 columns."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)
