"""The bar every classifier must clear: TF-IDF + logistic regression, scored like the rest.

    lmforge baseline tfidf --task data/wordnet-task --out runs/demo/tfidf

The course's recipe: 50k features, word 1-2-grams, sublinear tf, logistic regression. The
fitted model is saved without pickles (vocabulary as JSON, idf and weights as safetensors),
and scored with the same metrics, tiers, calibration and speed protocol as the neural ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from pydantic import Field
from safetensors.numpy import load_file, save_file

from lmforge.config import Section, save_config
from lmforge.data.tasks import TaskConfig, resolve_task, subsample
from lmforge.eval.bench import dir_size_mb, measure_speed
from lmforge.eval.classification import evaluate_split, length_bucket, split_scores
from lmforge.stages.summaries import BaselineSummary
from lmforge.utils import staging_dir, write_json


class TfidfConfig(Section):
    out_dir: str = "runs/demo/tfidf"
    task: TaskConfig = Field(default_factory=TaskConfig)
    max_features: int = 50_000
    ngram_max: int = 2  # word n-grams 1..ngram_max
    sublinear_tf: bool = True
    C: float = 1.0  # inverse regularisation strength of the logistic regression
    max_iter: int = 1000
    class_weight: str | None = None  # None or "balanced"
    eval_splits: list[str] = ["val", "test"]
    speed: bool = True


class TfidfModel:
    """A fitted vectorizer + linear classifier that saves and loads without pickles."""

    def __init__(self, vectorizer, coef: np.ndarray, intercept: np.ndarray, label_names: list[str]):
        self.vectorizer, self.coef, self.intercept, self.label_names = (
            vectorizer,
            coef,
            intercept,
            label_names,
        )

    def transform(self, texts):
        return self.vectorizer.transform(texts)

    def logits(self, X) -> np.ndarray:
        return np.asarray(X @ self.coef.T + self.intercept)

    def save(self, out: Path) -> None:
        v = self.vectorizer
        vocab = {term: int(i) for term, i in v.vocabulary_.items()}
        params = {"ngram_range": list(v.ngram_range), "sublinear_tf": v.sublinear_tf}
        (out / "tfidf.json").write_text(
            json.dumps({"params": params, "labels": self.label_names, "vocabulary": vocab})
        )
        save_file(
            {
                "idf": v.idf_.astype(np.float64),
                "coef": self.coef.astype(np.float64),
                "intercept": self.intercept.astype(np.float64),
            },
            str(out / "tfidf.safetensors"),
        )

    @classmethod
    def load(cls, path: str | Path) -> TfidfModel:
        from sklearn.feature_extraction.text import TfidfVectorizer  # slow import: baseline only

        path = Path(path)
        meta = json.loads((path / "tfidf.json").read_text())
        arrays = load_file(str(path / "tfidf.safetensors"))
        p = meta["params"]
        v = TfidfVectorizer(
            vocabulary=meta["vocabulary"],
            ngram_range=tuple(p["ngram_range"]),
            sublinear_tf=p["sublinear_tf"],
        )
        v.idf_ = arrays["idf"]
        return cls(v, arrays["coef"], arrays["intercept"], meta["labels"])


def run(cfg: TfidfConfig) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer  # slow import: baseline only
    from sklearn.linear_model import LogisticRegression

    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    task = resolve_task(cfg.task, out.parent / (out.name + "-task"))
    train = subsample(task.train, cfg.task.max_train_examples, cfg.task.seed)
    texts, y = [t for t, _ in train], np.array([label for _, label in train])
    print(f"[tfidf] {len(train):,} training texts, {task.num_labels} labels")
    vec = TfidfVectorizer(
        max_features=cfg.max_features, ngram_range=(1, cfg.ngram_max), sublinear_tf=cfg.sublinear_tf
    )
    X = vec.fit_transform(texts)
    t0 = time.perf_counter()
    clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, class_weight=cfg.class_weight)
    clf.fit(X, y)
    fit_s = time.perf_counter() - t0
    # LogisticRegression only knows the classes it saw; place them among all task labels.
    coef = np.zeros((task.num_labels, X.shape[1]))
    intercept = np.full(task.num_labels, -1e4)
    if len(clf.classes_) == 2:  # binary: one weight vector for class 1
        coef[clf.classes_[1]], intercept[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        coef[clf.classes_[0]], intercept[clf.classes_[0]] = 0.0, 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
    model = TfidfModel(vec, coef, intercept, task.label_names)

    counts = task.train_counts()
    with staging_dir(out) as tmp:
        model.save(tmp)
        save_config(cfg, tmp / "config.yaml")
        write_json(tmp / "labels.json", {"names": task.label_names, "train_counts": counts})
        summary: dict = {
            "stage": "baseline-tfidf",
            "method": "tfidf-logreg",
            "task": cfg.task.path,
            "num_labels": task.num_labels,
            "train_examples": len(train),
            "features": int(X.shape[1]),
            "fit_seconds": fit_s,
            "params_total": int(coef.size + intercept.size),
            "params_trainable": int(coef.size + intercept.size),
        }
        for split in cfg.eval_splits:
            rows = subsample(task.split(split), cfg.task.max_eval_examples, cfg.task.seed)
            if not rows:
                continue
            split_texts = [t for t, _ in rows]
            logits = model.logits(model.transform(split_texts))
            n_words = [len(t.split()) for t in split_texts]
            report = evaluate_split(
                tmp / "eval" / split,
                split_texts,
                [label for _, label in rows],
                logits,
                task.label_names,
                counts,
                slices={"words": [length_bucket(n) for n in n_words]},
            )
            summary[split] = split_scores(report)
        if cfg.speed:
            sample = [t for t, _ in task.val[:200]] or texts[:200]
            summary.update(measure_speed(model.transform, model.logits, sample))
        summary["checkpoint_mb"] = dir_size_mb(tmp, ("tfidf.*",))
        # The headline keys at the top level are the val split's (test is reported alongside).
        first = cfg.eval_splits[0] if cfg.eval_splits else None
        if first in summary:
            summary.update(summary[first])
        summary["stage_seconds"] = time.perf_counter() - t_start
        write_json(tmp / "summary.json", BaselineSummary(**summary).dump())
    return summary
