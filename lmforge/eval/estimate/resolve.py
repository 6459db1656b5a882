"""Which model an estimate is of: a preset name, a stage config YAML or a model directory
(an lmforge artifact, a Hugging Face checkpoint, ``hf:<repo id>``, ``pkg:<module>``), read as
its ModelConfig without loading any weights."""

from __future__ import annotations

import difflib
from pathlib import Path

from pydantic import ValidationError

from lmforge.artifact import read_model_config
from lmforge.config import read_yaml
from lmforge.errors import CheckpointError, ConfigError
from lmforge.model import hf
from lmforge.model.config import PRESETS, ModelConfig, from_preset
from lmforge.tokenizer import Tokenizer
from lmforge.utils import read_json


def resolve_model(spec: str) -> tuple[str, ModelConfig]:
    """("decoder" or "encoder", ModelConfig) from a preset name, a stage config YAML or a model
    directory (lmforge artifact, Hugging Face checkpoint, ``hf:<repo id>``, ``pkg:<module>``).

    A YAML config gives its model by ``preset:`` (+ ``model:`` overrides, with the vocabulary of
    its ``tokenizer:`` when that exists, as `lmforge pretrain` does), by a full ``model:``
    section, or by ``init:`` (the directory a stage starts from).
    """
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.is_file():
        return _kind(_from_yaml(path))
    if path.is_dir() or spec.startswith(("hf:", "pkg:")):
        return _kind(_from_directory(spec, where="--model"))
    if spec in PRESETS:
        return _kind(from_preset(spec))
    if "/" in spec or spec.startswith("."):
        raise ConfigError(
            f"--model '{spec}': no such file or directory. Give a stage config (.yaml), a model "
            f"directory, or a preset ({', '.join(PRESETS)})"
        )
    close = difflib.get_close_matches(spec, list(PRESETS), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"--model '{spec}' is not a preset, a stage config (.yaml) or a model directory.{hint} "
        f"Give one of the presets ({', '.join(PRESETS)}), a config such as "
        "configs/demo/pretrain.yaml, or a directory written by an lmforge stage or holding a "
        "Hugging Face config.json."
    )


def _kind(cfg: ModelConfig) -> tuple[str, ModelConfig]:
    return ("decoder" if cfg.causal else "encoder"), cfg


def _from_yaml(path: Path) -> ModelConfig:
    return model_from_config(read_yaml(path), str(path))  # ConfigError if missing or not YAML


def model_from_config(data: dict, path: str) -> ModelConfig:
    """The model a stage config (a recipe file, or one resolved with its overrides) trains."""
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{path}: `model:` must be a mapping of ModelConfig fields")
    try:
        if data.get("preset"):
            cfg = from_preset(data["preset"], **model)
            tokenizer = Path(data.get("tokenizer", "runs/demo/tokenizer"))
            if "vocab_size" not in model and (tokenizer / "tokenizer.json").is_file():
                # the vocabulary the stage would use
                cfg = cfg.model_copy(update={"vocab_size": Tokenizer.load(tokenizer).vocab_size})
        elif model:
            cfg = ModelConfig(**model)
        elif data.get("init"):
            return _from_directory(str(data["init"]), where=f"init in {path}")
        else:
            raise ConfigError(
                f"{path} names no model: it needs `preset:` (and optional `model:` overrides), "
                "a `model:` section, or `init:` with a model directory"
            )
    except ValidationError as e:
        raise ConfigError(f"{path}: invalid model settings: {e}") from None
    if data.get("objective") == "mlm" and cfg.causal:
        cfg = cfg.model_copy(update={"causal": False})
    return cfg


def _from_directory(spec: str, where: str) -> ModelConfig:
    """The config of a model directory (or ``hf:<repo id>``), without reading any weights."""
    if spec.startswith("hf:"):
        config = _hub_config(spec[3:], where)
        return hf.config_from_hf(read_json(config), str(config))[1]
    try:
        path = hf.resolve(spec)  # a local path, or pkg:<module>'s directory
    except CheckpointError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not path.is_dir():
        raise ConfigError(
            f"{where}: '{spec}' does not exist. Run the stage that writes it first, or estimate "
            "from a preset instead (--model lmforge-d6, qwen2.5-0.5b, ...)"
        )
    if hf.is_hf_dir(path):
        return hf.config_from_hf(read_json(path / "config.json"), str(path / "config.json"))[1]
    try:
        return read_model_config(path)[1]
    except CheckpointError as e:
        raise ConfigError(f"{where}: {e}") from None


def _hub_config(repo: str, where: str) -> Path:
    """config.json of a hub model from the Hugging Face cache. An estimate reads no weights and
    goes to no network: a repo not in the cache is an error that says how to get its config."""
    # optional: not one of our declared dependencies, and only hub names need it
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, "config.json", local_files_only=True))
    except Exception:  # not cached (or no such repo)
        preset = repo.rsplit("/", 1)[-1].lower()
        hint = (
            f" or estimate the preset with its shape: --model {preset}" if preset in PRESETS else ""
        )
        raise ConfigError(
            f"{where}: '{repo}' is not in the Hugging Face cache. Fetch its config (a few KB): "
            f"`hf download {repo} config.json`{hint}"
        ) from None
