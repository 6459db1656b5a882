"""Atomic checkpoints and exact resume.

A checkpoint is a directory ``checkpoints/step-000200/`` built under a temporary name and
renamed into place only when complete, so a crash mid-save leaves the previous checkpoint
intact. Weights are safetensors; optimizer state is a torch file read back with
``weights_only=True`` (no arbitrary pickles); everything else is JSON.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from lmforge.errors import CheckpointError
from lmforge.utils import read_json, staging_dir, write_json

STEP_DIR = re.compile(r"^step-(\d{6,})$")


def save_weights(
    model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Weights to safetensors; tied tensors are stored once (safetensors' save_model)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_model(model, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def aliases(model: nn.Module) -> dict[str, str]:
    """Tied parameters: each extra name of a parameter -> its first name."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, with an error that says what to do when it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is damaged or truncated ({e}). Delete that checkpoint directory to resume "
            "from an earlier one, or retrain."
        ) from None


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load safetensors into ``model`` with errors that name the file and the mismatch."""
    load_state(model, read_weights(path), str(path), strict=strict)


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str,
               strict: bool = True) -> None:  # fmt: skip
    """Load named tensors into ``model``; tied weights stored once fill all their names."""
    tensors = dict(tensors)
    own = model.state_dict()
    # tied weights are stored under one of their names (whichever the writer kept): fill the rest
    for alias, name in aliases(model).items():
        if alias not in tensors and name in tensors:
            tensors[alias] = tensors[name]
        elif name not in tensors and alias in tensors:
            tensors[name] = tensors[alias]
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [
        (k, tuple(tensors[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(
            f"{source} does not fit this model: '{k}' has shape {got} in the file but {want} in the "
            f"model ({len(wrong)} mismatched tensors). It was written by a different model config; "
            "load it with the config saved beside it (model.json) or start a fresh output directory."
        )
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{source} does not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. It was written by a "
            "different model config."
        )
    model.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=False)


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: dict,
    keep: int = 2,
) -> Path:
    """Write ``root/step-NNNNNN`` atomically and prune all but the newest ``keep``.

    Weights and optimizer state are full tensors keyed by parameter name (see
    train/distributed.py), so any number of ranks can resume from them."""
    final = Path(root) / f"step-{step:06d}"
    with staging_dir(final) as tmp:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        write_json(tmp / "state.json", {**state, "step": step})
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, optimizer state, trainer state) of a checkpoint directory, validated."""
    path = Path(path)
    for name in ("model.safetensors", "optimizer.pt", "state.json"):
        if not (path / name).is_file():
            raise CheckpointError(
                f"checkpoint {path} is incomplete: {name} is missing. Delete {path} to resume from "
                "an earlier checkpoint."
            )
    try:
        state = read_json(path / "state.json")
    except ValueError as e:
        raise CheckpointError(f"{path / 'state.json'} is damaged ({e}); delete {path}") from None
    weights = read_weights(path / "model.safetensors")
    try:
        opt_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError) as e:
        raise CheckpointError(
            f"{path / 'optimizer.pt'} is damaged ({e}); delete {path} to resume from an earlier "
            "checkpoint"
        ) from None
    return weights, opt_state, state
