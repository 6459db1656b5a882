import csv
import json
import random

import numpy as np

from lmforge.cli import main
from lmforge.eval.classification import SCORE_KEYS, evaluate_split
from lmforge.stages.baseline import TfidfConfig, TfidfModel, run

TOPICS = {
    "animal": "dog cat horse bird fish wolf fox bear deer mouse".split(),
    "food": "bread cheese apple soup rice meat cake butter salt honey".split(),
    "motion": "run walk jump swim fly crawl climb roll slide march".split(),
    "weather": "rain snow wind storm fog hail frost thunder cloud sun".split(),
}


def topic_csv(tmp_path, n=240, seed=0):
    """Texts whose label is recoverable from their words, with imbalanced classes."""
    rng = random.Random(seed)
    weights = {"animal": 0.4, "food": 0.3, "motion": 0.2, "weather": 0.1}
    path = tmp_path / "topics.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            label = rng.choices(list(weights), list(weights.values()))[0]
            words = rng.sample(TOPICS[label], 3) + rng.sample("the a of with and in".split(), 2)
            rng.shuffle(words)
            w.writerow([" ".join(words), label])
    return path


# What every classification summary.json carries (issue 3's list): metrics + size + speed.
REQUIRED = set(SCORE_KEYS) - {"unknown_label_examples"} | {
    "params_total",
    "params_trainable",
    "latency_ms_p50",
    "latency_ms_p95",
    "throughput_per_s",
    "peak_memory_mb",
    "checkpoint_mb",
}


def test_tfidf_baseline_learns_and_reports_everything(tmp_path):
    cfg = TfidfConfig(out_dir=str(tmp_path / "run"), task={"path": str(topic_csv(tmp_path))})
    summary = run(cfg)
    assert REQUIRED <= set(summary)
    assert summary["accuracy"] > 0.9 and summary["test"]["macro_f1"] > 0.8
    run_dir = tmp_path / "run"
    for f in (
        "per_class.csv",
        "confusion.png",
        "reliability.png",
        "predictions.parquet",
        "hardest.json",
        "metrics.json",
    ):
        assert (run_dir / "eval" / "val" / f).exists(), f
    assert not list(run_dir.rglob("*.pkl")) and not list(run_dir.rglob("*.joblib"))
    # the saved model reloads to the same logits
    model = TfidfModel.load(run_dir)
    texts = ["dog cat with the", "rain snow in a"]
    assert [model.label_names[i] for i in model.logits(model.transform(texts)).argmax(1)] == [
        "animal",
        "weather",
    ]


def test_cli_baseline_writes_summary(tmp_path, capsys):
    data = topic_csv(tmp_path)
    assert (
        main(
            ["baseline", "tfidf", "--task", str(data), "--out", str(tmp_path / "r"), "speed=false"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") : out.rindex("}") + 1])["accuracy"] > 0.9


def test_evaluation_counts_unknown_labels_and_scores_every_label(tmp_path):
    names = ["a", "b", "c"]
    y = [0, 1, -1, 0]  # the third example's label is unknown to the task
    logits = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [0, 3.0, 0]])
    rep = evaluate_split(
        tmp_path / "e",
        ["w", "x", "y", "z"],
        y,
        logits,
        names,
        [10, 5, 1],
        slices={"len": ["short", "long", "short", "long"]},
        plots=False,
    )
    assert rep["unknown_label_examples"] == 1 and rep["num_examples"] == 3
    # class c has no support and no prediction among known examples: F1 0, counted
    assert rep["zero_f1_classes"] == 1
    assert abs(rep["macro_f1"] - (2 / 3 + 2 / 3 + 0) / 3) < 1e-9
    assert rep["slices"]["len"]["short"]["n"] == 1
    rows = list(csv.DictReader(open(tmp_path / "e" / "per_class.csv")))
    assert [r["label"] for r in rows] == names
