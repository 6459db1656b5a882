"""A tiny IsoFLOP sweep of real pre-training runs, skipped when finished, and its fit."""

import pytest
from test_pretrain import TINY

from lmforge.cli import main
from lmforge.config import save_config, validate
from lmforge.errors import ConfigError
from lmforge.stages.pretrain import PretrainConfig
from lmforge.stages.scaling import fit
from lmforge.sweeps import SweepConfig, plan, sweep
from lmforge.utils import read_json, write_json


def sweep_config(tmp_path, tok, corpus, budgets):
    overrides = [o for o in TINY if not o.startswith("preset=")]
    overrides += [
        f"tokenizer={tok}",
        f"data.path={corpus}",
        f"data.shards={tmp_path / 'shards'}",
        "trainer.eval_every=100000",
        "model.max_seq_len=64",
    ]
    return validate(
        SweepConfig,
        {
            "out_dir": str(tmp_path / "sweep"),
            "overrides": overrides,
            "depths": [2, 3, 4],
            "budgets": budgets,
            "min_steps": 5,
        },
        "test",
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_corpus, tiny_tokenizer_dir):
    from lmforge.data.shards import build_shards
    from lmforge.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("scaling")
    build_shards(
        tiny_corpus,
        Tokenizer.load(tiny_tokenizer_dir),
        root / "shards",
        val_fraction=0.1,
        progress=False,
    )
    return root


def test_sweep_runs_each_size_and_budget_once_then_fits(shards, tiny_corpus, tiny_tokenizer_dir):
    cfg = sweep_config(shards, tiny_tokenizer_dir, tiny_corpus, [3e9, 6e9])
    planned = plan(cfg)
    assert len(planned) == 6 and all(r["steps"] >= 5 for r in planned)
    # steps are sized to the budget: a bigger model gets fewer steps at the same budget
    first = [r for r in planned if r["budget"] == 3e9]
    assert first[0]["steps"] > first[-1]["steps"]
    rows = sweep(cfg)
    assert len(rows) == 6 and all(r["val_loss"] > 0 for r in rows)
    mtimes = {r["run"]: (shards / "sweep").joinpath(r["run"]).stat().st_mtime for r in rows}
    again = sweep(cfg)  # finished runs are read back, not retrained
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in rows]
    assert {
        r["run"]: (shards / "sweep").joinpath(r["run"]).stat().st_mtime for r in again
    } == mtimes
    out = shards / "fit"
    assert (
        main(["scaling", "fit", str(shards / "sweep"), "--out", str(out), "--bootstrap", "5"]) == 0
    )
    result = read_json(out / "fit.json")
    assert len(result["runs"]) == 6 and (out / "isoflop.png").is_file()
    assert (out / "law.png").is_file()
    # six runs: enough for the 5-parameter law, so approach 3 is fitted (fewer: see below)
    assert result["approach3"]["n_runs"] == 6
    assert 1e-3 <= result["approach3"]["alpha"] <= 3 and 1e-3 <= result["approach3"]["beta"] <= 3
    assert result["predicted_optimum"]["flops"] == 10 * 6e9
    assert not [n for n in result["notes"] if "approach 3" in n]


def test_budgets_no_size_can_meet_are_refused(shards, tiny_corpus, tiny_tokenizer_dir):
    with pytest.raises(ConfigError, match="no .depth, FLOPs. pair reaches 5 steps"):
        plan(sweep_config(shards, tiny_tokenizer_dir, tiny_corpus, [1e3]))


def test_a_token_grid_gives_every_size_the_same_data(shards, tiny_corpus, tiny_tokenizer_dir):
    cfg = sweep_config(shards, tiny_tokenizer_dir, tiny_corpus, [])
    cfg.tokens = [2560.0, 5120.0]
    planned = plan(cfg)
    assert len(planned) == 6
    assert {r["steps"] for r in planned if r["tokens"] == 2560} == {10}  # 4 x 64 tokens a step
    # the realised FLOPs grow with the size at the same data
    same_data = [r["budget"] for r in planned if r["tokens"] == 2560]
    assert same_data == sorted(same_data) and len(set(same_data)) == 3
    cfg.budgets = [3e9]
    with pytest.raises(ConfigError, match="either `budgets`.*or `tokens`"):
        plan(cfg)


def finished_run(run, depth, tokens, val_loss, shards="/data/shards"):
    """A finished pretrain run as `scaling fit` reads it (config.yaml and summary.json), made
    without training so a fit test controls its runs: their number, data and losses."""
    cfg = validate(
        PretrainConfig,
        {
            "preset": f"lmforge-d{depth}",
            "tokenizer": "/data/tok",
            "data": {"shards": shards, "seq_len": 64},
            "model": {"vocab_size": 512, "max_seq_len": 64},
        },
        "test",
    )
    counts = cfg.model.count_params()
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    write_json(
        run / "summary.json",
        {
            "stage": "pretrain",
            "params": counts["total"],
            "params_non_embedding": counts["non_embedding"],
            "tokens_seen": tokens,
            "val_loss": val_loss,
        },
    )
    return run


def test_fit_with_fewer_runs_than_the_law_has_parameters_says_so(tmp_path):
    """Five runs: approach 3 (five parameters) is not fitted, and a note says what is missing."""
    for k, (depth, tokens) in enumerate([(2, 2560), (3, 2560), (4, 2560), (2, 5120), (3, 5120)]):
        finished_run(tmp_path / "runs" / f"r{k}", depth, tokens, val_loss=5.0 - 0.1 * k)
    result = fit(tmp_path / "runs", tmp_path / "out", bootstrap=0)
    assert len(result["runs"]) == 5
    assert "approach3" not in result and "predicted_optimum" not in result
    assert [n for n in result["notes"] if "approach 3" in n] == [
        "approach 3 not fitted: a 5-parameter law needs at least 6 runs to fit; 5 given "
        "(1 more needed, and a dozen or more for useful intervals)"
    ]
    assert (tmp_path / "out" / "isoflop.png").is_file()


def test_fit_refuses_runs_from_different_data(tmp_path):
    mixed = tmp_path / "mixed"
    finished_run(mixed / "a", 2, 2560, 5.0, shards="/data/shards")
    finished_run(mixed / "b", 3, 2560, 4.9, shards="/other/shards")
    with pytest.raises(ConfigError, match="mixes runs with different tokenizers or data"):
        fit(mixed, tmp_path / "out", bootstrap=0)
    assert not (tmp_path / "out").exists()
