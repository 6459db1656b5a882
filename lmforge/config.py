"""One config system: pydantic models, YAML recipes, dotted overrides, unknown keys rejected.

A recipe is a YAML file whose keys mirror a pydantic model. Any key can be overridden on the
command line as ``trainer.max_steps=50``; the value is parsed as YAML (so ``true``, ``1e-3`` and
``[1, 2]`` mean what they look like). A key that does not exist is an error naming the closest
valid key, and every error names the file it came from.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

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


def parse_override(text: str) -> tuple[list[str], Any]:
    """``trainer.lr=3e-4`` -> (["trainer", "lr"], 0.0003)."""
    if "=" not in text:
        raise ConfigError(
            f"override '{text}' is not of the form key.sub=value (e.g. trainer.max_steps=50)"
        )
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else None
    # YAML reads 3e-4 as a string (it wants a dot); users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else int(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for text in overrides:
        path, value = parse_override(text)
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


def validate(cls: type[T], data: dict, source: str) -> T:
    check_keys(cls, data, source)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid config from {source}:\n" + "\n".join(lines)) from None


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] = ()) -> T:
    """Read a YAML recipe (or nothing), apply ``key=value`` overrides, validate into ``cls``."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    source = str(path) if path else "the command line"
    if overrides:
        source += " + overrides"
    return validate(cls, data, source)


def save_config(config: BaseModel, path: str | os.PathLike) -> None:
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(path, text)
