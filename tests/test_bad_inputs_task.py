"""Bad input to the task, compression, data, generation and pipeline verbs: each is a clear
error (what, where, how to fix; exit code 2 at the command line) that leaves nothing
half-written, or, where the input is usable, a visible note with the numbers (issue 17, part 3).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from helpers import tiny_config
from test_classify import decoder_dir, task_csv  # noqa: F401  (fixtures)

import lmforge
from lmforge import pipeline
from lmforge.artifact import save_model_artifact
from lmforge.cli import main
from lmforge.errors import ConfigError, DataError
from lmforge.model.transformer import LanguageModel
from lmforge.stages.classify import ClassifyConfig, train


def _cli(capsys, *argv) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `lmforge ARGV` (argparse's usage errors included)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _leftovers(folder: Path) -> list[str]:
    """Everything under a folder, hidden staging directories included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def recipe(tmp_path, decoder_dir):  # noqa: F811
    """A tiny classify recipe on the shared decoder; returns its path and run directory."""
    out = tmp_path / "runs" / "cls"
    path = tmp_path / "cls.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "out_dir": str(out),
                "init": str(decoder_dir),
                "method": "probe",
                "task": {"max_length": 16},
                "epochs": 1,
                "batch_size": 16,
                "speed": False,
                "trainer": {
                    "lr": 5e-3,
                    "warmup_steps": 1,
                    "eval_every": 100,
                    "checkpoint_every": 0,
                    "progress": False,
                    "precision": "fp32",
                },
            }
        )
    )
    return path, out


def _rewrite(src: Path, dst: Path, row) -> Path:
    """A copy of a text,label csv with each (text, label) row replaced by row(text, label)."""
    rows = list(csv.reader(src.open()))
    with dst.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "body"])
        for text, label in rows[1:]:
            w.writerow([*row(text, label), text])
    return dst


# -- classify ------------------------------------------------------------------------------


def test_eval_split_without_a_training_label_is_refused_before_anything_is_written(
    tmp_path,
    recipe,
    task_csv,  # noqa: F811
    capsys,
):
    cfg, out = recipe
    other = _rewrite(task_csv, tmp_path / "val.csv", lambda t, y: (t, "zz-" + y))
    code, _, err = _cli(
        capsys,
        "classify",
        "train",
        "--config",
        cfg,
        f"task.path={task_csv}",
        f"task.val_path={other}",
    )
    assert code == 2
    assert f"task.val_path {other}: none of the" in err and "occurs in training" in err
    assert "'zz-animal'" in err and "'animal'" in err  # what it has, what training has
    assert "Traceback" not in err
    assert _leftovers(tmp_path / "runs") == []


def test_a_task_directory_whose_val_labels_are_unknown_is_refused(tmp_path, recipe, task_csv):  # noqa: F811
    cfg, out = recipe
    task = tmp_path / "task"
    task.mkdir()
    rows = list(csv.reader(task_csv.open()))[1:]
    for split, labels in (
        ("train", [y for _, y in rows]),
        ("val", ["nope"] * len(rows)),
        ("test", [y for _, y in rows]),
    ):
        pq.write_table(
            pa.table({"text": [t for t, _ in rows], "label": labels}), task / f"{split}.parquet"
        )
    names = sorted({y for _, y in rows})
    (task / "labels.json").write_text(json.dumps({"names": names}))
    config = ClassifyConfig.model_validate(
        {**yaml.safe_load(cfg.read_text()), "task": {"path": str(task)}}
    )
    with pytest.raises(DataError, match=r"\[val\]: none of the 240 val examples has a label"):
        train(config)
    assert not out.exists()


def test_a_merge_map_that_collapses_every_class_is_blamed(tmp_path, recipe, task_csv, capsys):  # noqa: F811
    cfg, out = recipe
    merge = tmp_path / "merge.json"
    merge.write_text(json.dumps({y: "thing" for y in ("animal", "food", "motion", "weather")}))
    code, _, err = _cli(
        capsys,
        "classify",
        "train",
        "--config",
        cfg,
        f"task.path={task_csv}",
        f"task.merge_map={merge}",
    )
    assert code == 2
    assert f"task.merge_map {merge} collapses every training label" in err
    assert "'animal', 'food', 'motion', 'weather' -> one class" in err and "'thing'" in err
    assert "label column" not in err  # the column is fine; the map is not
    assert _leftovers(tmp_path / "runs") == []


def test_a_task_whose_texts_are_all_empty_is_refused(tmp_path, recipe, task_csv, capsys):  # noqa: F811
    cfg, out = recipe
    empty = _rewrite(task_csv, tmp_path / "empty.csv", lambda t, y: ("", y))
    code, _, err = _cli(capsys, "classify", "train", "--config", cfg, f"task.path={empty}")
    assert code == 2
    assert "all 240 texts in column 'text' are empty" in err
    assert "task.text_column" in err and "other columns: body" in err  # where the text is
    assert _leftovers(tmp_path / "runs") == []


def test_max_steps_caps_the_steps_epochs_imply_and_is_reported(recipe, task_csv, capsys):  # noqa: F811
    cfg, out = recipe
    code, stdout, _ = _cli(
        capsys,
        "classify",
        "train",
        "--config",
        cfg,
        f"task.path={task_csv}",
        "trainer.max_steps=3",
        "epochs=2",
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["steps"] == summary["steps"] == 3
    assert summary["steps_from_epochs"] > 3
    assert (
        f"trainer.max_steps=3 caps training at 3 steps (2 epochs would take {summary['steps_from_epochs']})"
        in stdout
    )


def test_a_finished_classifier_is_not_overwritten_by_another_config(recipe, task_csv, capsys):  # noqa: F811
    cfg, out = recipe
    run = ("classify", "train", "--config", cfg, f"task.path={task_csv}", "trainer.max_steps=2")
    assert _cli(capsys, *run)[0] == 0
    first = (out / "summary.json").read_text()
    code, _, err = _cli(capsys, *run, "method=full")
    assert code == 2
    assert f"{out} holds a finished run with a different config (method: probe -> full)" in err
    assert "--overwrite" in err and (out / "summary.json").read_text() == first
    assert _cli(capsys, *run, "method=full", "--overwrite")[0] == 0
    assert json.loads((out / "summary.json").read_text())["method"] == "full"


# -- quantize --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_lm(tmp_path_factory):
    """A model whose quantized layers are 320 and 128 wide (attention vs MLP down-projection):
    the default group 128 misses the first, 160 (a divisor of 320) misses the second."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("wide") / "lm"
    cfg = tiny_config(vocab_size=64, n_layer=1, n_embd=320, n_head=5, intermediate_size=128)
    save_model_artifact(out, LanguageModel(cfg))
    return out


@pytest.mark.parametrize("size", ["0", "-8"])
def test_group_size_below_one_is_a_usage_error(tmp_path, wide_lm, capsys, size):
    code, _, err = _cli(
        capsys,
        "quantize",
        wide_lm,
        "--method",
        "int4",
        "--group-size",
        size,
        "--out",
        tmp_path / "q",
    )
    assert code == 2
    assert f"argument --group-size: must be 1 or more, got {size}" in err
    assert not (tmp_path / "q").exists()


def test_group_size_given_must_fit_every_layer_and_the_hint_does(tmp_path, wide_lm, capsys):
    from lmforge.stages.quantize import quantize

    for size in (128, 160):
        code, _, err = _cli(
            capsys,
            "quantize",
            wide_lm,
            "--method",
            "int4",
            "--group-size",
            size,
            "--out",
            tmp_path / "q",
        )
        assert code == 2, err
        assert f"--group-size {size} does not divide the width of" in err
        assert "(128, 320)" in err and "sizes that fit all of them: 1, 2, 4, 8, 16, 32, 64" in err
        assert "Use --group-size 64" in err
        assert _leftovers(tmp_path) == []
    with pytest.raises(ConfigError, match="not a positive whole number"):
        quantize(wide_lm, tmp_path / "q", "int4", group_size=0)  # the Python API too
    code, _, err = _cli(
        capsys, "quantize", wide_lm, "--method", "int4", "--group-size", 64, "--out", tmp_path / "q"
    )  # the hint works
    assert code == 0, err


def test_default_group_size_is_one_that_fits_every_layer_with_a_note(tmp_path, wide_lm, capsys):
    code, _, err = _cli(capsys, "quantize", wide_lm, "--method", "int4", "--out", tmp_path / "q")
    assert code == 0, err
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["group_size"] == 64
    assert "largest size up to 128 that divides every quantized layer's width" in err
    assert summary["group_size_note"] in err
    loaded = lmforge.load(tmp_path / "q")  # the artifact records the size it was made with
    assert loaded.model.model.layers[0].self_attn.q_proj.group_size == 64


# -- data ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", ["0", "-5"])
def test_max_docs_per_source_below_one_is_a_usage_error(tmp_path, capsys, n):
    from lmforge.data.corpora import build_default_corpus

    code, _, err = _cli(
        capsys, "data", "build", "--out", tmp_path / "c", "--max-docs-per-source", n
    )
    assert code == 2
    assert f"argument --max-docs-per-source: must be 1 or more, got {n}" in err
    with pytest.raises(
        ConfigError, match="max_docs_per_source must be a whole number of 1 or more"
    ):
        build_default_corpus(tmp_path / "c", max_docs_per_source=int(n))
    assert not (tmp_path / "c").exists()


def test_a_corpus_too_small_for_the_vocabulary_says_so(tmp_path, capsys):
    (tmp_path / "md").mkdir()
    (tmp_path / "md" / "notes.md").write_text(
        "# Notes\n\n" + "The river runs to the sea and the sea is large. " * 40
    )
    code, out, err = _cli(
        capsys,
        "tokenizer",
        "train",
        "--data",
        tmp_path / "md",
        "--vocab-size",
        1000,
        "--out",
        tmp_path / "tok",
    )
    assert code == 0
    summary = json.loads(out)
    n = summary["vocab_size"]
    assert n < 1000 and summary["requested_vocab_size"] == 1000
    assert f"warning: the vocabulary has {n} tokens, not the 1000 asked for" in err
    assert "1 document(s)" in err and f"--vocab-size {n}" in err


# -- generate --------------------------------------------------------------------------------


def test_a_prompt_longer_than_the_context_is_refused(decoder_dir, capsys):  # noqa: F811
    prompt = "the river runs to the sea " * 40
    code, out, err = _cli(capsys, "generate", decoder_dir, "--prompt", prompt, "-n", 3)
    assert code == 2
    assert "this model's context is 64 (max_seq_len)" in err and "Shorten the prompt" in err
    assert out == ""  # nothing echoed before the refusal
    code, out, _ = _cli(capsys, "generate", decoder_dir, "--prompt", "the river", "-n", 3)
    assert code == 0 and out.startswith("the river")


# -- pipeline --------------------------------------------------------------------------------

PIPE = """
name: toy
vars: {runs: runs}
stages:
  corpus:
    run: data build --out ${runs}/corpus
    out: ${runs}/corpus
  tokenizer:
    run: tokenizer train --data ${runs}/corpus --out ${runs}/tokenizer
    out: ${runs}/tokenizer
  report:
    run: tradeoff ${runs}
    out: ${runs}/tradeoff.json
    needs: [tokenizer]
"""


def _pipe(tmp_path, monkeypatch, text=PIPE) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("pipe.yaml").write_text(text)
    return Path("pipe.yaml")


def test_a_cycle_is_called_a_cycle_and_named(tmp_path, monkeypatch, capsys):
    text = PIPE.replace(
        "    out: ${runs}/corpus\n", "    out: ${runs}/corpus\n    needs: [report]\n"
    )
    _pipe(tmp_path, monkeypatch, text)
    code, _, err = _cli(capsys, "run", "pipe.yaml", "--dry-run")
    assert code == 2
    assert "the stages 'corpus' -> 'tokenizer' -> 'report' -> 'corpus' form a cycle" in err
    assert "'corpus' reads the output of 'report'" in err


def test_a_misspelt_need_offers_the_stage_meant(tmp_path, monkeypatch):
    _pipe(tmp_path, monkeypatch, PIPE.replace("needs: [tokenizer]", "needs: [tokenzier]"))
    with pytest.raises(
        ConfigError, match="needs unknown stage 'tokenzier'; did you mean 'tokenizer'"
    ):
        pipeline.load("pipe.yaml")


def test_the_cache_key_changes_with_lmforges_version_and_source(tmp_path, monkeypatch):
    _pipe(tmp_path, monkeypatch)
    key = pipeline.load("pipe.yaml").stage("corpus").key
    assert pipeline.load("pipe.yaml").stage("corpus").key == key  # stable
    # this is a git checkout: its source is part of the key
    assert pipeline.spec._is_development_checkout(Path(lmforge.__file__).resolve().parent)
    assert pipeline.source_hash() is not None
    monkeypatch.setattr(pipeline.spec, "source_hash", lambda: "edited")
    assert pipeline.load("pipe.yaml").stage("corpus").key != key
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lmforge, "__version__", "99.0")
    assert pipeline.load("pipe.yaml").stage("corpus").key != key
