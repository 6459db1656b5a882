"""Classification metrics, defined once: the course's fifteen notebooks had three tier
definitions and two zero-F1 definitions; lmforge has one of each, documented here.

- macro F1 averages over **every** label of the task (a class absent from the evaluated split
  counts with F1 0 if predicted, else 0 by convention: ``zero_division=0``), so runs on the same
  task are comparable whatever the split holds.
- ``zero_f1_classes`` counts labels whose F1 is 0, over every label, support or not.
- tiers are set by **train** frequency: classes sorted by train count, split into head / mid /
  tail thirds (configurable cut-offs as fractions of the class list), plus ``rare`` = the
  bottom quartile of classes. Per-tier macro F1 averages F1 over the tier's classes.
- ECE uses 15 equal-width confidence bins (Guo et al. 2017); temperature is fitted by L-BFGS
  on log T on one half of validation and reported on the other half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

DEFAULT_TIER_CUTS = {
    "head": (0.0, 1 / 3),
    "mid": (1 / 3, 2 / 3),
    "tail": (2 / 3, 1.0),
    "rare": (0.75, 1.0),
}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def assign_tiers(
    train_counts: Sequence[int], cuts: dict[str, tuple[float, float]] | None = None
) -> dict[str, list[int]]:
    """Label ids of each tier. Classes are ranked by train count, most frequent first (ties by
    id); a tier (lo, hi) takes the ranks in [lo * K, hi * K)."""
    cuts = cuts or DEFAULT_TIER_CUTS
    k = len(train_counts)
    order = sorted(range(k), key=lambda i: (-train_counts[i], i))
    tiers = {}
    for name, (lo, hi) in cuts.items():
        a, b = int(round(lo * k)), int(round(hi * k))
        tiers[name] = sorted(order[a:b])
    return tiers


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> np.ndarray:
    return f1_score(y_true, y_pred, labels=list(range(num_labels)), average=None, zero_division=0)


def macro_f1(
    y_true: np.ndarray, y_pred: np.ndarray, num_labels: int, labels: Sequence[int] | None = None
) -> float:
    f1 = per_class_f1(y_true, y_pred, num_labels)
    idx = list(range(num_labels)) if labels is None else list(labels)
    return float(f1[idx].mean()) if idx else float("nan")


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Sum over equal-width confidence bins of |accuracy - confidence| weighted by bin size."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> list[dict]:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        n = int(in_bin.sum())
        out.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "count": n,
                "accuracy": float(correct[in_bin].mean()) if n else None,
                "confidence": float(conf[in_bin].mean()) if n else None,
            }
        )
    return out


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature minimising NLL, by L-BFGS on log T (Guo et al. 2017)."""

    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(y_true, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) else 1.0


def calibration(logits: np.ndarray, y_true: np.ndarray, seed: int = 0, n_bins: int = 15) -> dict:
    """ECE before and after temperature scaling; T fitted on one half, reported on the other."""
    n = len(y_true)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    fit_idx, report_idx = perm[: n // 2], perm[n // 2 :]
    if len(fit_idx) == 0:
        fit_idx = report_idx
    t = fit_temperature(logits[fit_idx], y_true[fit_idx])
    probs = softmax(logits)
    return {
        "ece": expected_calibration_error(probs, y_true, n_bins),
        "temperature": t,
        "ece_before_temperature_heldout": expected_calibration_error(
            probs[report_idx], y_true[report_idx], n_bins
        ),
        "ece_after_temperature": expected_calibration_error(
            softmax(logits[report_idx], t), y_true[report_idx], n_bins
        ),
        "nll": float(-np.log(np.clip(probs[np.arange(n), y_true], 1e-12, None)).mean()),
    }


def classification_report(
    y_true: np.ndarray,
    logits: np.ndarray,
    train_counts: Sequence[int],
    label_names: Sequence[str],
    tier_cuts: dict[str, tuple[float, float]] | None = None,
) -> dict:
    """Headline numbers and a per-class table for one evaluated split."""
    y_true = np.asarray(y_true)
    num_labels = len(label_names)
    y_pred = logits.argmax(axis=1)
    labels = list(range(num_labels))
    p, r, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    tiers = assign_tiers(train_counts, tier_cuts)
    tier_of = {}
    for name in ("head", "mid", "tail"):
        for i in tiers.get(name, []):
            tier_of[i] = name
    per_class = [
        {
            "label": label_names[i],
            "id": i,
            "tier": tier_of.get(i, ""),
            "train_count": int(train_counts[i]),
            "support": int(support[i]),
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f1[i]),
        }
        for i in labels
    ]
    out = {
        "num_examples": int(len(y_true)),
        "num_labels": num_labels,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "zero_f1_classes": int((f1 == 0).sum()),
        "tier_macro_f1": {
            name: float(f1[idx].mean()) if idx else None for name, idx in tiers.items()
        },
        "tier_sizes": {name: len(idx) for name, idx in tiers.items()},
        **calibration(logits, y_true),
        "per_class": per_class,
        "most_confused": most_confused(y_true, y_pred, label_names),
    }
    return out


def most_confused(
    y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str], k: int = 10
) -> list[dict]:
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(y_true.tolist(), y_pred.tolist()):
        if t != p:
            pairs[(t, p)] = pairs.get((t, p), 0) + 1
    top = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [{"true": label_names[t], "predicted": label_names[p], "count": c} for (t, p), c in top]


def hardest_examples(y_true: np.ndarray, logits: np.ndarray, k: int = 10) -> dict[str, list[int]]:
    """Indices of the most confidently wrong predictions and of the smallest top-2 margins."""
    probs = softmax(logits)
    pred = probs.argmax(1)
    conf = probs.max(1)
    wrong = np.where(pred != y_true)[0]
    confident_wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:k]
    top2 = (
        np.sort(probs, axis=1)[:, -2:]
        if probs.shape[1] > 1
        else np.concatenate([np.zeros_like(probs), probs], 1)
    )
    margin = top2[:, 1] - top2[:, 0]
    return {
        "confidently_wrong": confident_wrong.tolist(),
        "smallest_margin": np.argsort(margin, kind="stable")[:k].tolist(),
    }


def paired_bootstrap(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    num_labels: int,
    tiers: dict[str, list[int]] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Macro-F1 difference (a - b) with a 95% percentile interval from resampling examples.

    The same resampled indices score both systems (paired), so the interval reflects the
    difference between them rather than the noise of each.
    """
    y_true, pred_a, pred_b = map(np.asarray, (y_true, pred_a, pred_b))
    groups = {"overall": None, **(tiers or {})}
    rng = np.random.default_rng(seed)
    n = len(y_true)
    deltas = {g: [] for g in groups}
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        fa = per_class_f1(y_true[idx], pred_a[idx], num_labels)
        fb = per_class_f1(y_true[idx], pred_b[idx], num_labels)
        for g, labels in groups.items():
            sel = slice(None) if labels is None else labels
            deltas[g].append(float(fa[sel].mean() - fb[sel].mean()))
    out = {}
    fa = per_class_f1(y_true, pred_a, num_labels)
    fb = per_class_f1(y_true, pred_b, num_labels)
    for g, labels in groups.items():
        sel = slice(None) if labels is None else labels
        d = np.array(deltas[g])
        lo, hi = np.percentile(d, [2.5, 97.5])
        out[g] = {
            "delta": float(fa[sel].mean() - fb[sel].mean()),
            "ci95": [float(lo), float(hi)],
            "p_a_not_better": float((d <= 0).mean()),
        }
    return out


def mean_ci95(values, n_resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (e.g. per-prompt wins 1, ties
    0.5, losses 0), resampling the items; deterministic for a seed."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    return total_nats / (math.log(2) * total_bytes)
