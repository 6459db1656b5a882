"""Atomic checkpoints and exact resume.

A checkpoint is a directory ``checkpoints/step-000200/`` built under a temporary name and
renamed into place only when complete, so a crash mid-save leaves the previous checkpoint
intact. Weights are safetensors; optimizer state is a torch file read back with
``weights_only=True`` (no arbitrary pickles); everything else is JSON.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from lmforge.config import config_changes, config_dict, format_changes, read_yaml, save_config
from lmforge.errors import CheckpointError, ConfigError
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


def load_state(
    model: nn.Module, tensors: dict[str, torch.Tensor], source: str, strict: bool = True
) -> None:
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
    # An artifact's weights have their ModelConfig beside them; a checkpoint's run keeps its
    # config in the run directory's config.yaml (the caller says so).
    beside = Path(source).with_name("model.json")
    fix = f" Load it with the config saved beside it ({beside})." if beside.is_file() else ""
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(
            f"{source} does not fit this model: '{k}' has shape {got} in the file but {want} in the "
            f"model ({len(wrong)} mismatched tensors). It was written by a different model config."
            + fix
        )
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{source} does not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. It was written by a "
            "different model config." + fix
        )
    model.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=False)


def remove_stale_partials(root: str | os.PathLike) -> list[Path]:
    """Remove what a killed save leaves in ``root``: hidden ``.<name>.*.partial`` directories
    (utils.staging_dir), ``.<name>.old`` directories and ``.<name>.*tmp`` files. Call it at
    start-up, before anything saves into ``root`` (no save is under way then)."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for p in root.iterdir():
        if not p.name.startswith("."):
            continue
        if p.is_dir() and p.name.endswith(".partial"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_dir() and p.name.endswith(".old"):
            final = p.with_name(p.name[1:].removesuffix(".old"))
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:  # killed between moving the old one aside and the new one in: put it back
                os.replace(p, final)
        elif p.is_file() and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
        else:
            continue
        removed.append(p)
    return removed


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """Where the Trainer keeps a run's resumable state (only this module and the Trainer know)."""
    return Path(run_dir) / "checkpoints"


def discard_training_state(run_dir: str | os.PathLike) -> None:
    """A finished run's resumable state and best-so-far weights: no longer needed once its
    artifact and summary are written."""
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)
    (Path(run_dir) / "best.safetensors").unlink(missing_ok=True)


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


# ------------------------------------------------------------------------------------------
# The run directory: new, resumed, or refused
# ------------------------------------------------------------------------------------------

# What a resumed run may change: how long and how it runs, not what it trains (`epochs` sets
# the post-training stages' max_steps; samples, answers and win_rate are measured after
# training). The run's config.yaml is rewritten with the values in force. A key ending in "."
# covers a section.
RESUMABLE_CHANGES = (
    "trainer.max_steps",
    "trainer.time_limit_s",
    "trainer.progress",
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.tensorboard",
    "trainer.device",
    "trainer.compile",
    "trainer.precision",
    "trainer.parallel",
    "trainer.peak_flops",
    "trainer.resume",
    "epochs",
    "samples.",
    "answers.",
    "win_rate.",
    "out_dir",
)
# What changes nothing a finished run produced: re-running with it is the same run.
COSMETIC_CHANGES = ("out_dir", "trainer.progress")


def _covered(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in keys)


@dataclass
class RunDir:
    """What a stage does with its output directory; nothing is written until ``commit``."""

    path: Path
    action: Literal["new", "resume", "restart"]
    config: object  # the resolved config (a pydantic model) that config.yaml will hold
    created: bool = False  # this run made the directory: remove it if the run never starts
    changes: list = field(default_factory=list)  # from the config.yaml found there

    def commit(self) -> None:
        """Just before training (rank 0): clear what an earlier run left that this one does
        not continue, and write config.yaml with the config in force."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.action != "resume":
            shutil.rmtree(checkpoint_dir(self.path), ignore_errors=True)
            for name in ("summary.json", "metrics.jsonl", "best.safetensors"):
                (self.path / name).unlink(missing_ok=True)
        save_config(self.config, self.path / "config.yaml")

    def abandon(self) -> None:
        """Bad input found before training: leave nothing half-made behind."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)


def _inputs_inside(config_dump, out: Path) -> list[str]:
    """Paths the config names that exist inside ``out`` (what --overwrite must not delete)."""
    if isinstance(config_dump, dict):
        return [p for v in config_dump.values() for p in _inputs_inside(v, out)]
    if isinstance(config_dump, list):
        return [p for v in config_dump for p in _inputs_inside(v, out)]
    if not isinstance(config_dump, str) or not config_dump or len(config_dump) > 4096:
        return []
    try:
        path = Path(config_dump).resolve()
        inside = path.is_relative_to(out) and path.exists()
    except (OSError, ValueError):
        return []
    return [config_dump] if inside else []


@contextlib.contextmanager
def preparing_run(
    out: str | os.PathLike, config, overwrite: bool = False, is_main: bool = True
) -> Iterator[RunDir]:
    """A stage's start: `with preparing_run(out, cfg) as run:` around loading data and model.

    What ``out`` holds decides, before anything is written: a new run, a resumed one, or a
    refusal (``open_run_dir``). Bad input found inside the block leaves nothing half-made
    behind; a block that completes writes config.yaml with the config in force (rank 0)."""
    run = open_run_dir(out, config, overwrite, is_main=is_main)
    try:
        yield run
    except BaseException:
        if is_main:
            run.abandon()
        raise
    if is_main:
        run.commit()


def open_run_dir(
    out: str | os.PathLike,
    config,
    overwrite: bool = False,
    resumable: tuple[str, ...] = RESUMABLE_CHANGES,
    is_main: bool = True,
) -> RunDir:
    """Decide, before anything is written, what this run does with ``out``:

    - no run there: a new run;
    - an interrupted run (checkpoints, trainer.resume=auto): resume it, if only ``resumable``
      keys changed; otherwise refuse;
    - a finished run (summary.json): run again if the config is the same; otherwise refuse;
    - a run that stopped before its first checkpoint, or trainer.resume=never: start over.

    ``overwrite`` (--overwrite) discards a run that would be refused, and starts a new one.
    """
    out = Path(out)
    if is_main:
        # What a killed save left behind, removed now: before this run's ranks write anything
        # here (later, another rank may be staging its own files in the same directory).
        remove_stale_partials(out)
        remove_stale_partials(checkpoint_dir(out))
    new = config_dict(config)
    saved_path = out / "config.yaml"
    finished = (out / "summary.json").is_file()
    latest = latest_checkpoint(checkpoint_dir(out))
    resume = new.get("trainer", {}).get("resume", "auto") == "auto" and latest is not None
    if not saved_path.is_file() and not finished and not resume:
        return RunDir(out, "new", config, created=not out.exists())
    try:
        changes = config_changes(read_yaml(saved_path), new)
    except ConfigError:  # missing or damaged: what the run was cannot be known
        changes = [(str(saved_path), "missing or unreadable", "this run's config")]
    if resume and not finished:
        refused = [c for c in changes if not _covered(c[0], resumable)]
        if not refused:
            return RunDir(out, "resume", config, changes=changes)
        what = f"an interrupted run (newest checkpoint: {latest.name})"
        fix = (
            f"resume it with the values in {saved_path} (a resumed run may change only "
            "trainer.max_steps, trainer.time_limit_s and how it logs, evaluates, checkpoints "
            "and where it runs), or pass --overwrite to discard it and start over, or "
            "choose another out_dir"
        )
    elif finished:
        refused = [c for c in changes if not _covered(c[0], COSMETIC_CHANGES)]
        if not refused:
            return RunDir(out, "restart", config, changes=changes)
        what = "a finished run"
        fix = (
            f"choose another out_dir (e.g. out_dir={out}-2), or pass --overwrite to replace "
            "the finished run"
        )
    else:  # stopped before its first checkpoint, or trainer.resume=never: nothing to continue
        return RunDir(out, "restart", config, changes=changes)
    if not overwrite:
        raise ConfigError(
            f"{out} holds {what} with a different config ({format_changes(refused)}); "
            f"this run would overwrite it. Fix: {fix}."
        )
    inside = _inputs_inside({k: v for k, v in new.items() if k != "out_dir"}, out.resolve())
    if inside:
        raise ConfigError(
            f"--overwrite would delete {inside[0]}, which this run reads, with the rest of {out}. "
            "Fix: move it out of the run directory first, or choose another out_dir."
        )
    if is_main:
        shutil.rmtree(out)
    return RunDir(out, "new", config, created=True, changes=changes)


def rng_state() -> dict:
    """Python's, NumPy's and torch's generators, as JSON a checkpoint keeps for exact resume."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
