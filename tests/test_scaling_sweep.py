"""A tiny IsoFLOP sweep of real pre-training runs, skipped when finished, and its fit."""

import shutil

import pytest
from test_pretrain import TINY

from lmforge.cli import main
from lmforge.config import validate
from lmforge.errors import ConfigError
from lmforge.stages.scaling import SweepConfig, fit, plan, sweep
from lmforge.utils import read_json


def sweep_config(tmp_path, tok, corpus, budgets):
    overrides = [o for o in TINY if not o.startswith("preset=")]
    overrides += [f"tokenizer={tok}", f"data.path={corpus}", f"data.shards={tmp_path / 'shards'}",
                  "trainer.eval_every=100000", "model.max_seq_len=64"]  # fmt: skip
    return validate(SweepConfig, {"out_dir": str(tmp_path / "sweep"), "overrides": overrides,
                                  "depths": [2, 3, 4], "budgets": budgets, "min_steps": 5}, "test")  # fmt: skip


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
    assert "approach3" in result or any("approach 3" in n for n in result["notes"])


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


def test_fit_refuses_runs_from_different_data(shards, tmp_path):
    runs = sorted((shards / "sweep").glob("C*"))
    if not runs:
        pytest.skip("needs the sweep of the test above")
    mixed = tmp_path / "mixed"
    shutil.copytree(runs[0], mixed / "a")
    shutil.copytree(runs[1], mixed / "b")
    cfg = (mixed / "b" / "config.yaml").read_text().replace("shards: /", "shards: /other", 1)
    (mixed / "b" / "config.yaml").write_text(cfg)
    with pytest.raises(ConfigError, match="mixes runs with different tokenizers or data"):
        fit(mixed, tmp_path / "out", bootstrap=0)
