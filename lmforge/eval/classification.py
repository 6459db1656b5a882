"""Evaluate a classifier's logits on a split and write everything a report needs.

    <out>/metrics.json        headline numbers, tiers, calibration, slices, most-confused pairs
    <out>/per_class.csv       label, tier, train count, support, precision, recall, F1
    <out>/confusion.png       row-normalised confusion matrix (labels by train frequency)
    <out>/reliability.png     reliability diagram before and after temperature scaling
    <out>/predictions.parquet text, label, predicted, confidence (for `lmforge compare`)
    <out>/hardest.json        confidently wrong and smallest-margin examples, with texts

Examples whose label is unknown to the task (id -1) are counted and left out of the metrics.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import confusion_matrix

from lmforge.eval import metrics as M
from lmforge.utils import atomic_write_text, write_json

LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)


def length_bucket(n: int) -> str:
    lo = 0
    for hi in LENGTH_BUCKETS:
        if n <= hi:
            return f"{lo + 1}-{hi}"
        lo = hi
    return f">{LENGTH_BUCKETS[-1]}"


def slice_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, values: Sequence, num_labels: int
) -> dict:
    """Accuracy and macro F1 (over every label, as everywhere) for each value of a slice."""
    values = np.asarray([str(v) for v in values])
    out = {}
    for v in sorted(set(values.tolist())):
        sel = values == v
        out[v] = {
            "n": int(sel.sum()),
            "accuracy": float((y_true[sel] == y_pred[sel]).mean()),
            "macro_f1": M.macro_f1(y_true[sel], y_pred[sel], num_labels),
        }
    return out


def evaluate_split(
    out_dir: str | os.PathLike,
    texts: Sequence[str],
    y_true: Sequence[int],
    logits: np.ndarray,
    label_names: Sequence[str],
    train_counts: Sequence[int],
    slices: dict[str, Sequence] | None = None,
    tier_cuts: dict | None = None,
    plots: bool = True,
) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y_all = np.asarray(y_true)
    logits = np.asarray(logits, dtype=np.float64)
    known = y_all >= 0
    texts_k = [t for t, k in zip(texts, known) if k]
    y, z = y_all[known], logits[known]
    report = M.classification_report(y, z, train_counts, label_names, tier_cuts)
    report["unknown_label_examples"] = int((~known).sum())
    y_pred = z.argmax(1)
    report["slices"] = {
        name: slice_metrics(
            y, y_pred, np.asarray(list(values), dtype=object)[known], len(label_names)
        )
        for name, values in (slices or {}).items()
    }
    hard = M.hardest_examples(y, z)
    probs = M.softmax(z)
    hardest = {
        kind: [
            {
                "text": texts_k[i],
                "label": label_names[y[i]],
                "predicted": label_names[y_pred[i]],
                "confidence": float(probs[i].max()),
            }
            for i in idx
        ]
        for kind, idx in hard.items()
    }
    write_json(out / "hardest.json", hardest)
    _write_per_class(out / "per_class.csv", report["per_class"])
    all_pred = logits.argmax(1)
    pq.write_table(
        pa.table(
            {
                "text": list(texts),
                "label": [label_names[i] if i >= 0 else None for i in y_all.tolist()],
                "predicted": [label_names[i] for i in all_pred.tolist()],
                "confidence": M.softmax(logits).max(1).astype(np.float32),
            }
        ),
        out / "predictions.parquet",
    )
    if plots:
        plot_confusion(out / "confusion.png", y, y_pred, label_names, train_counts)
        plot_reliability(out / "reliability.png", z, y, report["temperature"])
    write_json(out / "metrics.json", report)
    return report


def _write_per_class(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_confusion(path, y_true, y_pred, label_names, train_counts) -> None:
    import matplotlib  # a second to import: only a run that draws pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(label_names)
    order = sorted(range(k), key=lambda i: (-train_counts[i], i))
    cm = confusion_matrix(y_true, y_pred, labels=order).astype(float)
    cm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    size = min(16, 3 + 0.25 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    names = [label_names[i] for i in order]
    fontsize = max(4, min(9, 400 // max(k, 1)))
    ax.set_xticks(range(k), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (most frequent in training first)")
    ax.set_title("confusion matrix, rows normalised")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(path, logits, y_true, temperature: float, n_bins: int = 15) -> None:
    import matplotlib  # a second to import: only a run that draws pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for t, name in ((1.0, "raw"), (temperature, f"T = {temperature:.2f}")):
        probs = M.softmax(logits, t)
        bins = [b for b in M.reliability_bins(probs, y_true, n_bins) if b["count"]]
        ece = M.expected_calibration_error(probs, y_true, n_bins)
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o-",
            label=f"{name} (ECE {ece:.3f})",
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (15 bins)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SCORE_KEYS = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "zero_f1_classes",
    "tier_macro_f1",
    "ece",
    "ece_after_temperature",
    "temperature",
    "unknown_label_examples",
)


def split_scores(report: dict) -> dict:
    """The scores a run's summary keeps per eval split (stages/summaries.py's SplitScores)."""
    return {k: report[k] for k in SCORE_KEYS if k in report}
