"""Distillation's first step: a trained classifier's logits over a student's training texts.

    lmforge distill logits --teacher runs/demo/cls-minilm --out runs/demo/teacher-logits
    lmforge distill train --config configs/demo/classify-distill.yaml   # classify train, with
                                                                         # distill.teacher_logits

The logits are computed once and cached (data/logits_cache.py); a student is an ordinary
`classify train` run whose recipe names the cache. `distill grid` (stages/sweeps.py) trains
one student per temperature and weight.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lmforge.artifact import load
from lmforge.data.logits_cache import save_logits_cache
from lmforge.data.tasks import resolve_task, subsample
from lmforge.eval.classifier import predict_logits, read_settings, run_task
from lmforge.stages.summaries import ClassifierSummary


def teacher_logits(
    teacher: str | os.PathLike,
    out: str | os.PathLike,
    task_path: str | None = None,
    max_examples: int | None = None,
) -> dict:
    """Run a trained classifier over the training examples a student will see (the teacher
    run's own task and subsample unless given) and cache its logits: fp16 safetensors + ids."""
    teacher = Path(teacher)
    cfg = read_settings(teacher)
    if task_path:
        cfg.task.path = task_path
    if max_examples is not None:
        cfg.task.max_train_examples = max_examples
    loaded = load(teacher)
    if task_path:
        task = resolve_task(cfg.task, Path(tempfile.mkdtemp()) / "task")
    else:
        task = run_task(teacher, cfg)
    rows = subsample(task.train, cfg.task.max_train_examples, cfg.task.seed)
    texts = [t for t, _ in rows]
    logits, _, _ = predict_logits(
        loaded.model,
        loaded.tokenizer,
        texts,
        cfg.task.max_length,
        cfg.eval_batch_size,
        cfg.padding_side,
    )
    fitted = ClassifierSummary.read(teacher).temperature or 1.0
    info = {"teacher": str(teacher), "labels": task.label_names, "temperature": fitted}
    save_logits_cache(out, logits, texts, info)
    return {
        "teacher": str(teacher),
        "examples": len(texts),
        "labels": len(task.label_names),
        "temperature": fitted,
        "out": str(out),
    }
