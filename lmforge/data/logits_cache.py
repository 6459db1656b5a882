"""A teacher's logits, computed once and cached for distillation.

`lmforge distill logits` runs a trained classifier over the training texts a student will see
and saves its logits here; `classify train` with `distill.teacher_logits` reads them back in
the order of its own training examples. Examples are matched by a hash of their text, so the
cache survives a re-subsampling that keeps the same texts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np

from lmforge.errors import CheckpointError
from lmforge.utils import read_json, staging_dir, write_json


def text_id(text: str) -> str:
    """An example's id in a logits cache: a hash of its text (stable across re-subsampling)."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def save_logits_cache(out: str | Path, logits: np.ndarray, texts: list[str], info: dict) -> None:
    """A teacher's logits over the texts a student trains on (fp16), with their ids: atomic."""
    with staging_dir(out) as tmp:
        save_np({"logits": logits.astype("float16")}, str(tmp / "logits.safetensors"))
        write_json(tmp / "examples.json", {**info, "ids": [text_id(t) for t in texts]})


def aligned_teacher_logits(distill, texts: list[str], label_names: list[str]):
    """The cached teacher logits in the order of the student's training texts; refuses a
    cache whose labels differ or that lacks some of the student's examples."""
    folder = Path(distill.teacher_logits)
    if not (folder / "examples.json").is_file():
        raise CheckpointError(
            f"{folder} is not a teacher-logits cache; make one with `lmforge distill logits "
            "--teacher RUN --out DIR`"
        )
    info = read_json(folder / "examples.json")
    if info["labels"] != label_names:
        extra = sorted(set(info["labels"]) ^ set(label_names))
        raise CheckpointError(
            f"{folder}: the teacher's labels differ from the task's "
            f"({len(info['labels'])} vs {len(label_names)}; e.g. {extra[:3] or 'the order'}); "
            "distil from a teacher trained on the same task"
        )
    index = {i: k for k, i in enumerate(info["ids"])}
    missing = [t for t in texts if text_id(t) not in index]
    if missing:
        raise CheckpointError(
            f"{folder}: no teacher logits for {len(missing)} of the student's {len(texts)} "
            f"training examples (e.g. {missing[0][:60]!r}); compute them for the same task and "
            "subsample (`lmforge distill logits --max-examples N`)"
        )
    logits = load_np(str(folder / "logits.safetensors"))["logits"].astype("float32")
    logits = logits[[index[text_id(t)] for t in texts]]
    if distill.calibrate_teacher:
        logits = logits / info["temperature"]
    return logits
