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


def _synthetic_runs(law, noise=0.002, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ns, ds = np.geomspace(1e6, 1e9, 5), np.geomspace(1e8, 1e11, 5)
    n, d = (a.ravel() for a in np.meshgrid(ns, ds))
    loss = np.array([law.loss(x, y) for x, y in zip(n, d)]) * np.exp(rng.normal(0, noise, n.size))
    return n, d, loss


def test_approach_3_recovers_a_known_law_with_intervals():
    from lmforge.eval.scaling_laws import fit_parametric

    n, d, loss = _synthetic_runs(CHINCHILLA)
    fit = fit_parametric(n, d, loss, bootstrap=20)
    assert fit["law"].alpha == pytest.approx(0.34, abs=0.03)
    assert fit["law"].beta == pytest.approx(0.28, abs=0.03)
    assert fit["law"].E == pytest.approx(1.69, abs=0.05)
    assert fit["a"] == pytest.approx(0.28 / 0.62, abs=0.01)
    lo, hi = fit["a_interval"]  # bootstrap over the runs: around the estimate, and narrow here
    assert lo <= fit["a"] <= hi and hi - lo < 0.05


def test_too_few_runs_are_refused_with_how_many_more():
    from lmforge.eval.scaling_laws import fit_isoflop, fit_parametric

    with pytest.raises(ValueError, match="at least 6 runs.*4 given.*2 more"):
        fit_parametric([1e6, 1e7, 1e8, 1e9], [1e9] * 4, [3, 2.8, 2.6, 2.5])
    with pytest.raises(ValueError, match=">= 2 FLOP budgets with >= 3 model sizes"):
        fit_isoflop([1e18] * 3, [1e6, 1e7, 1e8], [3.0, 2.9, 3.1])


def test_approach_2_finds_the_isoflop_minima_of_a_known_law():
    import numpy as np

    from lmforge.eval.scaling_laws import fit_isoflop

    flops, n, loss = [], [], []
    for c in (1e18, 1e19, 1e20, 1e21):
        n_star, _ = CHINCHILLA.optimum(c)
        for f in np.geomspace(0.25, 4, 7):
            (
                flops.append(c),
                n.append(n_star * f),
                loss.append(CHINCHILLA.loss(n_star * f, c / (6 * n_star * f))),
            )
    fit = fit_isoflop(flops, n, loss, bootstrap=20)
    assert fit["a"] == pytest.approx(0.28 / 0.62, abs=0.03)  # Chinchilla: a = beta / (alpha + beta)
    for m in fit["minima"]:
        assert m["n_opt"] == pytest.approx(CHINCHILLA.optimum(m["flops"])[0], rel=0.1)


def test_accounting_counts_the_model_and_palms_attention_flops():
    from helpers import tiny_config

    from lmforge.eval.scaling_laws import accounting
    from lmforge.model.transformer import LanguageModel, count_parameters

    cfg = tiny_config(
        vocab_size=100, n_layer=2, n_embd=32, n_head=4, intermediate_size=64, tie_embeddings=False
    )
    counted = count_parameters(LanguageModel(cfg))
    a = accounting(cfg, seq_len=16, tokens=1e6, tokens_per_s=1e3, peak_flops=1e12)
    assert a["params"] == counted["total"]
    assert a["params_non_embedding"] == counted["total"] - counted["embedding"]
    # by hand: blocks (attention 4 x 32 x 32 with 4 kv heads, SwiGLU 3 x 32 x 64, two norms)
    # and the 100 x 32 output projection, which runs for every token
    n = 2 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 100 * 32
    assert a["params_matmul"] == n and a["flops_6nd"] == 6 * n * 1e6
    attention = 12 * 2 * 4 * 8 * 16  # 12 L H Q T
    assert a["flops"] == (6 * n + attention) * 1e6
    assert abs(a["mfu"] - 1e3 * (6 * n + attention) / 1e12) < 1e-15


def test_isoflop_minima_outside_the_sizes_tried_are_refused_with_what_to_add():
    from lmforge.eval.scaling_laws import fit_isoflop

    sizes = [1e6, 2e6, 4e6]
    # the loss rises with size at both budgets: the optimum is below the smallest model
    flops = [1e13] * 3 + [3e13] * 3
    loss = [4.0, 4.3, 4.8, 3.6, 3.8, 4.3]
    with pytest.raises(ValueError, match="smallest model .* is best; add smaller models"):
        fit_isoflop(flops, sizes * 2, loss, bootstrap=0)
