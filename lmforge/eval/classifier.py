"""A trained classifier run, read back and scored: what every classification verb shares.

`classify train` scores the model it trained with ``score``; a quantized copy (`quantize`) is
scored with the same function and the settings its source was trained with
(``read_settings``), so the two compare; `classify eval`, `classify predict`, `distill logits`
and `tradeoff` read runs the same way; ``compare`` is the paired bootstrap between two runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
import torch
from pydantic import Field

from lmforge.config import Section, read_yaml, validate
from lmforge.data.tasks import (
    CFPB_COLUMNS,
    Task,
    TaskConfig,
    encode_examples,
    load_task,
    pad_batch,
    read_table,
    resolve_task,
    subsample,
)
from lmforge.errors import ConfigError, DataError
from lmforge.eval.bench import measure_speed
from lmforge.eval.classification import evaluate_split, length_bucket, split_scores
from lmforge.eval.metrics import assign_tiers, paired_bootstrap
from lmforge.utils import read_json


class ClassifierSettings(Section):
    """How a classifier run reads its task and is evaluated (ClassifyConfig's shared part)."""

    task: TaskConfig = Field(default_factory=TaskConfig)
    padding_side: Literal["right", "left"] = "right"
    eval_splits: list[str] = ["val", "test"]
    # Columns of the raw data to report metrics by (e.g. [Product]); matched to examples by text.
    slice_columns: list[str] = []
    eval_batch_size: int = 64
    speed: bool = True  # measure latency / throughput / memory with eval/bench.py's protocol


@torch.no_grad()
def predict_logits(
    model,
    tokenizer,
    texts: list[str],
    max_length: int,
    batch_size: int = 64,
    padding_side: str = "right",
) -> tuple[np.ndarray, list[int], list[bool]]:
    """Logits for texts, batched by similar length (sorted, then restored to input order)."""
    model.eval()
    ids, truncated = encode_examples(tokenizer, texts, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.head_cfg.num_labels), dtype=np.float32)
    # the trainer's evals run on its GPU; a model without torch weights (ONNX Runtime) on the CPU
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = pad_batch([ids[i] for i in idx], tokenizer.pad_id, padding_side)
        with torch.inference_mode():
            logits = model(
                batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            )
        out[idx] = logits.float().cpu().numpy()
    return out, [len(x) for x in ids], truncated


def evaluate_run(
    model, tokenizer, task: Task, split: str, out_dir: Path, cfg: ClassifierSettings
) -> dict:
    rows = subsample(task.split(split), cfg.task.max_eval_examples, cfg.task.seed)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    logits, lengths, truncated = predict_logits(
        model, tokenizer, texts, cfg.task.max_length, cfg.eval_batch_size, cfg.padding_side
    )
    slices = {
        "tokens": [length_bucket(n) for n in lengths],
        "truncated": ["yes" if t else "no" for t in truncated],
    }
    for col, values in column_slices(cfg, texts).items():
        slices[col] = values
    report = evaluate_split(
        out_dir / "eval" / split,
        texts,
        labels,
        logits,
        task.label_names,
        task.train_counts(),
        slices=slices,
    )
    report["truncated_examples"] = int(sum(truncated))
    return report


def column_slices(cfg: ClassifierSettings, texts: list[str]) -> dict[str, list]:
    """Values of the user's slice columns for each text, read from the raw data."""
    if not cfg.slice_columns:
        return {}
    tables = read_table(cfg.task.path)
    out = {}
    for col in cfg.slice_columns:
        lookup: dict[str, str] = {}
        for table in tables.values():
            renames = {**CFPB_COLUMNS, **cfg.task.column_map}
            table = table.rename_columns([renames.get(c, c) for c in table.column_names])
            if col not in table.column_names:
                raise DataError(
                    f"slice column '{col}' is not in {cfg.task.path}. Columns: {', '.join(table.column_names)}"
                )
            for t, v in zip(
                table.column(cfg.task.text_column).to_pylist(), table.column(col).to_pylist()
            ):
                lookup.setdefault(t or "", str(v))
        out[col] = [lookup.get(t, "(unknown)") for t in texts]
    return out


def speed(model, tokenizer, texts: list[str], cfg: ClassifierSettings) -> dict:
    def prepare(batch_texts):
        ids, _ = encode_examples(tokenizer, batch_texts, cfg.task.max_length)
        return pad_batch(ids, tokenizer.pad_id, cfg.padding_side)

    def run(batch):
        return model(batch["input_ids"], attention_mask=batch["attention_mask"])

    model.eval()
    return measure_speed(prepare, run, texts)


def score(model, tokenizer, task: Task, cfg: ClassifierSettings, out: Path) -> dict:
    """What every classifier's summary holds: each eval split's headline metrics (the first
    split's also at the top level), and speed with the one protocol. Used by training and by
    compression (a quantized copy is scored exactly as its source was)."""
    result: dict = {}
    for split in cfg.eval_splits:
        if task.split(split):
            report = evaluate_run(model, tokenizer, task, split, out, cfg)
            result[split] = {
                **split_scores(report),
                "truncated_examples": report["truncated_examples"],
            }
    if cfg.speed:
        result.update(speed(model, tokenizer, [t for t, _ in (task.val or task.train)[:200]], cfg))
    first = next((s for s in cfg.eval_splits if s in result), None)
    if first:
        result.update(result[first])
    return result


def read_settings(run_dir: str | Path) -> ClassifierSettings:
    """The evaluation settings of a classifier run (its config.yaml, the training keys aside)."""
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise ConfigError(f"{run_dir} is not a classify run directory (no config.yaml)")
    raw = read_yaml(p)
    mine = {k: v for k, v in raw.items() if k in ClassifierSettings.model_fields}
    return validate(ClassifierSettings, mine, str(p))


def run_task(run_dir: Path, cfg: ClassifierSettings) -> Task:
    """The task a run was trained on: its prepared copy, or prepared again from the config."""
    prepared = run_dir / "task"
    return load_task(prepared) if prepared.exists() else resolve_task(cfg.task, prepared)


def compare(
    run_a: str | Path,
    run_b: str | Path,
    split: str = "test",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Paired bootstrap of the macro-F1 difference (a - b), overall and per tier, on the same
    examples (each run's eval/<split>/predictions.parquet, written by train or eval)."""
    preds, labels_info = [], None
    for run in (Path(run_a), Path(run_b)):
        f = run / "eval" / split / "predictions.parquet"
        if not f.is_file():
            raise ConfigError(
                f"{f} is missing: run `lmforge classify eval {run} --split {split}` first"
            )
        preds.append(pq.read_table(f).to_pydict())
        info = run / "labels.json"
        if labels_info is None and info.is_file():
            labels_info = read_json(info)
    a, b = preds
    if a["text"] != b["text"] or a["label"] != b["label"]:
        raise ConfigError(
            f"{run_a} and {run_b} were evaluated on different examples of '{split}' "
            "(different tasks or subsamples); a paired comparison needs the same ones"
        )
    if labels_info is None:
        raise ConfigError(
            f"neither {run_a} nor {run_b} has labels.json; is it a classify or baseline run?"
        )
    names = labels_info["names"]
    index = {n: i for i, n in enumerate(names)}
    keep = [i for i, y in enumerate(a["label"]) if y in index]
    y = np.array([index[a["label"][i]] for i in keep])
    pa_ = np.array([index[a["predicted"][i]] for i in keep])
    pb_ = np.array([index[b["predicted"][i]] for i in keep])
    tiers = assign_tiers(labels_info["train_counts"]) if "train_counts" in labels_info else None
    result = paired_bootstrap(y, pa_, pb_, len(names), tiers, n_resamples, seed)
    return {
        "a": str(run_a),
        "b": str(run_b),
        "split": split,
        "examples": len(keep),
        "n_resamples": n_resamples,
        "macro_f1_difference_a_minus_b": result,
    }
