import numpy as np
import pytest
from sklearn.metrics import f1_score

from lmforge.eval.metrics import (
    assign_tiers,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    mean_ci95,
    paired_bootstrap,
    softmax,
)


def test_macro_f1_counts_every_label_even_without_support():
    y = np.array([0, 0, 1, 1])
    logits = np.eye(4)[[0, 0, 1, 3]] * 5  # label 2 never appears, label 3 predicted wrongly
    rep = classification_report(y, logits, train_counts=[10, 5, 3, 1], label_names=list("abcd"))
    assert rep["macro_f1"] == pytest.approx(np.mean([1.0, 2 / 3, 0.0, 0.0]))
    assert rep["zero_f1_classes"] == 2
    assert rep["macro_f1"] != pytest.approx(
        f1_score(y, logits.argmax(1), average="macro")
    )  # sklearn's default differs


def test_tiers_rank_by_train_frequency():
    tiers = assign_tiers([5, 100, 1, 50, 20, 2, 8, 30, 3, 9, 70, 4])
    assert tiers["head"] == sorted([1, 10, 3, 7])
    assert tiers["tail"] == sorted([11, 8, 5, 2])  # ranks 8..11 of 12
    assert tiers["rare"] == sorted([5, 8, 2])


def test_ece_of_a_perfectly_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(0)
    n = 20000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < conf
    y = np.zeros(n, dtype=int)
    pred = np.where(correct, 0, 1)
    probs = np.stack([np.where(pred == 0, conf, 1 - conf), np.where(pred == 1, conf, 1 - conf)], 1)
    assert expected_calibration_error(probs, y) < 0.01
    sharp = probs**4 / (probs**4).sum(1, keepdims=True)
    assert expected_calibration_error(sharp, y) > 0.1


def test_temperature_recovers_the_scale_of_overconfident_logits():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2
    y = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    assert fit_temperature(true_logits * 3, y) == pytest.approx(3.0, rel=0.1)


def test_paired_bootstrap_sees_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 800)
    good = np.where(rng.uniform(size=800) < 0.8, y, rng.integers(0, 4, 800))
    bad = np.where(rng.uniform(size=800) < 0.5, y, rng.integers(0, 4, 800))
    res = paired_bootstrap(y, good, bad, 4, tiers={"low": [2, 3]}, n_resamples=200)
    assert res["overall"]["ci95"][0] > 0 and "low" in res
    same = paired_bootstrap(y, good, good, 4, n_resamples=50)
    assert same["overall"]["delta"] == 0 and same["overall"]["ci95"] == [0.0, 0.0]


def test_mean_ci95_is_the_bootstrap_interval_of_a_rate():
    # 200 prompts, 110 wins: the normal approximation gives 0.55 +- 1.96 * sqrt(.55*.45/200)
    outcomes = [1.0] * 110 + [0.0] * 90
    lo, hi = mean_ci95(outcomes)
    half = 1.96 * (0.55 * 0.45 / 200) ** 0.5
    assert lo == pytest.approx(0.55 - half, abs=0.015) and hi == pytest.approx(
        0.55 + half, abs=0.015
    )
    assert mean_ci95(outcomes) == [lo, hi]  # deterministic
    assert mean_ci95([1.0] * 20) == [1.0, 1.0]
    a, b = mean_ci95([1.0, 0.0] * 400)  # four times the prompts: half the width
    assert (b - a) == pytest.approx((hi - lo) * (200 / 800) ** 0.5, rel=0.2)
