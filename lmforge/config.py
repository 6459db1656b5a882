"""One config system: pydantic models, YAML recipes, dotted overrides, unknown keys rejected.

A recipe is a YAML file whose keys mirror a pydantic model. Any key can be overridden on the
command line as ``trainer.max_steps=50``; the value is parsed as YAML (so ``true``, ``1e-3`` and
``[1, 2]`` mean what they look like), except that a text field keeps the text as typed
(``model.name=1e3`` is "1e3"). A key that does not exist is an error naming the closest valid
key; a bad value is an error naming the key, the value, where it came from and a valid value.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lmforge.errors import ConfigError
from lmforge.utils import atomic_write_text

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    """Base for every config section: strict about keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation like ``Foo`` or ``Foo | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def check_keys(cls: type[BaseModel], data: Any, source: str, prefix: str = "") -> None:
    """Raise ConfigError for the first key in ``data`` that ``cls`` does not define."""
    if not isinstance(data, dict):
        return
    fields = cls.model_fields
    for key, value in data.items():
        if key not in fields:
            dotted = f"{prefix}{key}"
            valid = [f"{prefix}{name}" for name in fields]
            close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown key '{dotted}' in {source}; {hint}")
        annotation = fields[key].annotation
        if get_origin(annotation) is dict and isinstance(value, dict):
            # A mapping of names to sections (a pipeline's stages): check each section.
            sub = _submodel(get_args(annotation)[1])
            if sub is not None and sub.model_config.get("extra") == "forbid":
                for name, item in value.items():
                    check_keys(sub, item, source, f"{prefix}{key}.{name}.")
            continue
        sub = _submodel(annotation)
        if sub is not None and sub.model_config.get("extra") == "forbid":
            check_keys(sub, value, source, f"{prefix}{key}.")


_MISSING = object()


def _annotation_at(cls: type[BaseModel], path: list[str]) -> Any:
    """The type annotation of the field a dotted path names, or _MISSING if none does."""
    annotation: Any = cls
    for part in path:
        if get_origin(annotation) is dict:  # a mapping of names to sections: skip the name
            annotation = get_args(annotation)[1]
            continue
        model = _submodel(annotation)
        if model is None or part not in model.model_fields:
            return _MISSING
        annotation = model.model_fields[part].annotation
    return annotation


def _is_text(annotation: Any) -> bool:
    """True for ``str``, ``str | None`` and string Literals: fields whose value is text."""
    if annotation is str:
        return True
    origin, args = get_origin(annotation), [a for a in get_args(annotation) if a is not type(None)]
    if origin is Literal:
        return all(isinstance(a, str) for a in args)
    if origin in (Union, UnionType):
        return bool(args) and all(_is_text(a) for a in args)
    return False


def _lookup(data: Any, path: list | tuple) -> Any:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list | tuple) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return _MISSING
    return data


def _default_at(cls: type[BaseModel], path: list | tuple) -> Any:
    """The value ``cls`` gives a dotted path by default (the stage's own default), if any."""
    try:
        return _lookup(cls().model_dump(mode="json"), path)
    except ValidationError:  # a config with required keys has no default for them
        return _MISSING


def _as_override(value: Any) -> str:
    """A value as it would be written after ``key=`` on the command line."""
    if isinstance(value, str):
        return value
    return (
        yaml.safe_dump(value, default_flow_style=True, width=1000)
        .strip()
        .removesuffix("...")
        .strip()
    )


def parse_override(text: str, cls: type[BaseModel] | None = None) -> tuple[list[str], Any]:
    """``trainer.lr=3e-4`` -> (["trainer", "lr"], 0.0003).

    The value is YAML; a text field (``str``) keeps the text as typed, so ``name=1e3`` is the
    string "1e3", not the number 1000.0. ``cls`` (the config class) tells which fields hold text.
    """
    if "=" not in text:
        raise ConfigError(
            f"override '{text}' is not of the form key.sub=value (e.g. trainer.max_steps=50)"
        )
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    path = key.split(".")
    annotation = _annotation_at(cls, path) if cls is not None else _MISSING
    text_field = annotation is not _MISSING and _is_text(annotation)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        if text_field:
            return path, raw.strip()
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        default = _default_at(cls, path) if cls is not None else _MISSING
        fix = (
            f"e.g. {key}={_as_override(default)} (the default)"
            if default is not _MISSING
            else ("write a plain value (50, 0.1, true, text) or a whole list ([1, 2])")
        )
        raise ConfigError(
            f"override '{text}': the value '{raw}' is not valid YAML ({problem}). Fix: {fix}"
        ) from None
    if text_field and value is not None and not isinstance(value, str):
        return path, raw.strip()  # 1e3, 2024, true: the text as typed
    # YAML reads 3e-4 as a string (it wants a dot); users mean a number.
    if isinstance(value, str) and not text_field:
        try:
            value = float(value) if any(c in value for c in "eE.") else int(value)
        except ValueError:
            pass
    return path, value


def apply_overrides(data: dict, overrides: list[str], cls: type[BaseModel] | None = None) -> dict:
    data = dict(data)
    for text in overrides:
        path, value = parse_override(text, cls)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a mapping of keys to values, not {type(data).__name__}"
        )
    return data


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _explain(
    cls: type[BaseModel], err: dict, file_data: dict, file: str | None, typed: dict[tuple, str]
) -> str:
    """One line for one validation error: the key, the bad value, what is wrong, the fix."""
    loc = tuple(err["loc"])
    # pydantic says "Input should be ..."; a model validator says "Value error, ..."
    what = err["msg"].replace("Input should be", "must be", 1).removeprefix("Value error, ")
    if not loc:
        return f"  {what}"
    if err["type"] == "missing":
        default = _default_at(cls, loc)
        hint = f", e.g. {_dotted(loc)}={_as_override(default)}" if default is not _MISSING else ""
        return f"  {_dotted(loc)} is required. Fix: set it{hint}"
    # The key as one writes it (trainer.betas, not trainer.betas[1]) and the part that is wrong.
    n = next((i for i, part in enumerate(loc) if isinstance(part, int)), len(loc))
    key_loc, key = loc[:n], _dotted(loc[:n])
    what = what if n == len(loc) else f"{_dotted(loc)} {what}"
    from_cli = next((raw for path, raw in typed.items() if key_loc[: len(path)] == path), None)
    if from_cli is not None:
        bad, where = from_cli, "on the command line"
    else:
        value = _lookup(file_data, key_loc)
        bad = _as_override(err.get("input") if value is _MISSING else value)
        where = f"in {file}" if file else "in the config"
    line = f"  {key}={bad} ({where}): {what}."
    if err["type"] == "string_type" and from_cli is None and file:
        return f"{line} Fix: quote it in {file}: {key_loc[-1]}: '{bad}'"
    # The fix: a valid value to write instead, the recipe's own if an override replaced it.
    example, whose = _lookup(file_data, key_loc), f"the value in {file}"
    if from_cli is None or example is _MISSING or _as_override(example) == bad:
        example, whose = _default_at(cls, key_loc), "the default"
    if example is _MISSING or example is None or _as_override(example) == bad:
        return f"{line} Fix: set {key} to a value that {what.replace('must be', 'is', 1)}"
    return f"{line} Fix: e.g. {key}={_as_override(example)} ({whose})"


def validate(
    cls: type[T],
    data: dict,
    source: str,
    file_data: dict | None = None,
    file: str | None = None,
    typed: dict[tuple, str] | None = None,
) -> T:
    """``data`` as a ``cls``, or a ConfigError naming each bad key, its value and a fix.

    ``file_data`` is the recipe before overrides and ``typed`` maps each override's key path
    to the value as typed, so that a message can say where a bad value came from."""
    check_keys(cls, data, source)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = [_explain(cls, err, file_data or {}, file, typed or {}) for err in e.errors()]
        raise ConfigError(f"invalid config ({source}):\n" + "\n".join(lines)) from None


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] = ()) -> T:
    """Read a YAML recipe (or nothing), apply ``key=value`` overrides, validate into ``cls``."""
    file_data = read_yaml(path) if path else {}
    data = apply_overrides(file_data, list(overrides), cls)
    typed = {
        tuple(t.split("=", 1)[0].strip().lstrip("-").split(".")): t.split("=", 1)[1]
        for t in overrides
    }
    source = str(path) if path else "the command line"
    if overrides:
        source += " + overrides"
    return validate(cls, data, source, file_data, str(path) if path else None, typed)


def config_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf where two config dicts differ. A key
    only one side has (added or removed by another lmforge version) is not a change."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in old if k in new for c in config_changes(old[k], new[k], f"{prefix}{k}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def format_changes(changes: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    """``model.n_layer: 2 -> 4, trainer.lr: 0.003 -> 0.001`` (and how many more)."""
    shown = [f"{k}: {_as_override(a)} -> {_as_override(b)}" for k, a, b in changes[:limit]]
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(shown) + more


def config_dict(config: BaseModel) -> dict:
    """A config as config.yaml holds it (the YAML round trip turns tuples into lists)."""
    return yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def save_config(config: BaseModel, path: str | os.PathLike) -> None:
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(path, text)
