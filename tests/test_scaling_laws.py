"""Published scaling laws reproduce their papers' derived figures."""

import pytest

from lmforge.cli import main
from lmforge.eval.scaling_laws import CHINCHILLA, EPOCH, KAPLAN, PF_DAY, predict


def test_chinchilla_rounded_coefficients_give_its_derived_optimum():
    # Hoffmann et al.: at Chinchilla's budget, 5.76e23 FLOPs, approach 3 puts N_opt near 3.2e10
    # (they report 40B with the unrounded fit) and about 93 tokens per parameter
    n, d = CHINCHILLA.optimum(5.76e23)
    assert n == pytest.approx(3.2e10, rel=0.02)
    assert d / n == pytest.approx(93, rel=0.02)
    assert 6 * n * d == pytest.approx(5.76e23, rel=1e-9)


def test_epoch_replication_gives_about_twenty_tokens_per_parameter():
    n, d = EPOCH.optimum(5.76e23)
    assert n == pytest.approx(7.2e10, rel=0.02)
    assert d / n == pytest.approx(18, rel=0.05)


def test_the_optimum_minimises_the_law_along_the_budget():
    c = 1e21
    n, d = CHINCHILLA.optimum(c)
    best = CHINCHILLA.loss(n, d)
    for f in (0.5, 0.8, 1.25, 2.0):  # any other split of the same budget is worse
        assert CHINCHILLA.loss(n * f, c / (6 * n * f)) > best


def test_kaplan_frontier_and_predict_side_by_side(capsys):
    n, d = KAPLAN.optimum(PF_DAY)
    assert n == pytest.approx(1.3e9) and 6 * n * d == pytest.approx(PF_DAY)
    rows = {r["law"]: r for r in predict(1e21)}
    assert set(rows) == {"chinchilla", "epoch", "kaplan", "20-tokens"}
    assert rows["20-tokens"]["tokens_per_param"] == pytest.approx(20)
    # Kaplan favours bigger models on fewer tokens than Chinchilla at the same budget
    assert rows["kaplan"]["n_opt"] > rows["chinchilla"]["n_opt"]
    assert main(["scaling", "predict", "--flops", "5.76e23", "--law", "chinchilla"]) == 0
    out = capsys.readouterr().out
    assert "| chinchilla | 3.22e+10 |" in out
    assert main(["scaling", "predict", "--flops", "-1"]) == 2
