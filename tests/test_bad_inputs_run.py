"""Bad input to the training verbs: a clear error (the key, the bad value, the fix), exit code 2,
and nothing half-written (issue 17, part 3). Each case runs the real CLI entry in-process on a
tiny corpus, tokenizer and model."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from lmforge.cli import main
from lmforge.utils import read_jsonl

TINY = [
    "preset=lmforge-d2",
    "model.n_embd=32",
    "model.n_head=2",
    "model.intermediate_size=64",
    "data.seq_len=32",
    "data.val_fraction=0.1",
    "data.eval_batches=1",
    "trainer.micro_batch_size=2",
    "trainer.compile=false",
    "trainer.precision=fp32",
    "trainer.warmup_steps=1",
    "trainer.log_every=1",
    "trainer.eval_every=1000",
    "trainer.progress=false",
    "samples.prompts=[]",
]


def pretrain(tok, corpus, out, *extra) -> list[str]:
    return [
        "pretrain",
        "--config",
        "configs/demo/pretrain.yaml",
        f"tokenizer={tok}",
        f"data.path={corpus}",
        f"out_dir={out}",
        *TINY,
        "trainer.max_steps=4",
        *extra,
    ]


def interrupted_run(monkeypatch, tok, corpus, out, *extra, checkpoint: bool = True) -> None:
    """A run stopped by Ctrl-C before its artifact is written, after its step-2 checkpoint
    (or, without ``checkpoint``, with none: a run that had nothing to resume yet)."""
    import lmforge.stages.pretrain as stage

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    every = "trainer.checkpoint_every=2" if checkpoint else "trainer.checkpoint_every=0"
    with monkeypatch.context() as m:
        m.setattr(stage, "save_model_artifact", interrupt)
        assert main(pretrain(tok, corpus, out, every, *extra)) == 130
    assert (out / "checkpoints" / "step-000002").is_dir() == checkpoint
    assert (out / "config.yaml").is_file() and not (out / "summary.json").exists()


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# -- values refused before anything is written -----------------------------------------------


@pytest.mark.parametrize(
    "override, says",
    [
        ("trainer.lr=-1", "must be greater than 0"),
        ("trainer.micro_batch_size=0", "must be greater than or equal to 1"),
        ("trainer.max_steps=0", "must be greater than or equal to 1"),
        ("trainer.grad_clip=0", "must be greater than 0"),
        ("trainer.warmup_fraction=1.5", "must be less than or equal to 1"),
        ("trainer.betas=[0.9,1.5]", "trainer.betas[1] must be less than 1"),
        ("data.eval_batches=0", "must be greater than or equal to 1"),
        ("data.seq_len=1", "must be greater than or equal to 2"),
        ("trainer.device=nonesuch", "not a device"),
        ("model.n_layer=0", "must be greater than or equal to 1"),
        ("model.dropout=1", "must be less than 1"),
    ],
)
def test_a_bad_value_names_key_value_and_fix_and_writes_nothing(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys, override, says
):
    out = tmp_path / "run"
    argv = pretrain(tiny_tokenizer_dir, tiny_corpus, out, override)
    assert main(argv) == 2
    err = error_of(capsys)
    assert f"{override} (on the command line): {says}" in err
    assert not out.exists()
    # the fix names a value (the recipe's own, or the default) that is accepted, or, for a
    # key with no default value, what a valid one is
    key = override.split("=")[0]
    fix = re.search(rf"Fix: e\.g\. ({re.escape(key)}=.+?) \((?:the value in|the default)", err)
    if fix is None:
        assert f"Fix: set {key} to a value that {says.replace('must be', 'is')}" in err, err
    else:
        assert main([*argv[:-1], fix.group(1), "--print-config"]) == 0


def test_an_override_that_is_not_yaml_is_explained(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys
):
    out = tmp_path / "run"
    assert main(pretrain(tiny_tokenizer_dir, tiny_corpus, out, "trainer.max_steps=[1")) == 2
    err = error_of(capsys)
    assert "override 'trainer.max_steps=[1'" in err and "not valid YAML" in err
    assert "Fix: e.g. trainer.max_steps=1000" in err
    assert not out.exists()


def test_a_text_field_keeps_the_text_as_typed(capsys):
    argv = [
        "pretrain",
        "--config",
        "configs/demo/pretrain.yaml",
        "model.name=1e3",
        "data.text_column=2024",
        "trainer.lr=1e-3",
        "--print-config",
    ]
    assert main(argv) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["name"] == "1e3" and cfg["data"]["text_column"] == "2024"
    assert cfg["trainer"]["lr"] == 1e-3  # a number field still reads 1e-3 as a number


def test_a_missing_text_column_names_the_recipe_key(tmp_path, tiny_tokenizer_dir, capsys):
    (tmp_path / "d.csv").write_text("id,body\n1,hello there\n")
    out = tmp_path / "run"
    assert main(pretrain(tiny_tokenizer_dir, tmp_path / "d.csv", out)) == 2
    err = error_of(capsys)
    assert "no column 'text'" in err and "id, body" in err
    assert "data.text_column" in err and "--text-column" not in err  # pretrain has no such flag
    assert not out.exists()


# -- the run directory: refuse, resume or replace --------------------------------------------


def test_a_finished_run_is_not_overwritten_by_another_config(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys
):
    out = tmp_path / "run"
    assert main(pretrain(tiny_tokenizer_dir, tiny_corpus, out)) == 0
    weights = (out / "model.safetensors").read_bytes()
    summary = (out / "summary.json").read_text()
    capsys.readouterr()

    assert main(pretrain(tiny_tokenizer_dir, tiny_corpus, out, "model.n_layer=3")) == 2
    err = error_of(capsys)
    assert f"{out} holds a finished run with a different config (model.n_layer: 2 -> 3)" in err
    assert "--overwrite" in err and f"out_dir={out}-2" in err
    assert (out / "model.safetensors").read_bytes() == weights
    assert (out / "summary.json").read_text() == summary
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["n_layer"] == 2

    # the same config again is the same run: allowed
    assert main(pretrain(tiny_tokenizer_dir, tiny_corpus, out, "trainer.progress=true")) == 0
    # --overwrite replaces it
    assert (
        main(pretrain(tiny_tokenizer_dir, tiny_corpus, out, "model.n_layer=3", "--overwrite")) == 0
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["n_layer"] == 3
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


def test_a_run_remade_on_another_corpus_does_not_train_on_the_old_shards(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, monkeypatch
):
    from conftest import make_corpus

    out = tmp_path / "run"
    # stopped before its first checkpoint: nothing to resume, its shards stay behind
    interrupted_run(monkeypatch, tiny_tokenizer_dir, tiny_corpus, out, checkpoint=False)
    assert (out / "shards" / "meta.json").is_file()
    other = make_corpus(tmp_path / "other" / "docs.jsonl", n_docs=200, seed=1)
    assert main(pretrain(tiny_tokenizer_dir, other, out)) == 0
    meta = json.loads((out / "shards" / "meta.json").read_text())
    assert meta["source"] == str(other)


def test_an_interrupted_run_resumes_with_a_new_max_steps_and_records_it(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, monkeypatch
):
    out = tmp_path / "run"
    interrupted_run(monkeypatch, tiny_tokenizer_dir, tiny_corpus, out)
    assert yaml.safe_load((out / "config.yaml").read_text())["trainer"]["max_steps"] == 4
    assert main(pretrain(tiny_tokenizer_dir, tiny_corpus, out, "trainer.max_steps=6")) == 0
    events = [m for m in read_jsonl(out / "metrics.jsonl") if m.get("event") == "resumed"]
    assert [e["step"] for e in events] == [2]
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    # config.yaml is the config the run finished under, not the one it started with
    assert yaml.safe_load((out / "config.yaml").read_text())["trainer"]["max_steps"] == 6


def test_an_interrupted_run_refuses_another_model_unless_overwrite(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, monkeypatch, capsys
):
    out = tmp_path / "run"
    interrupted_run(monkeypatch, tiny_tokenizer_dir, tiny_corpus, out)
    capsys.readouterr()
    assert main(pretrain(tiny_tokenizer_dir, tiny_corpus, out, "model.n_embd=64")) == 2
    err = error_of(capsys)
    assert "holds an interrupted run (newest checkpoint: step-000002)" in err
    assert "model.n_embd: 32 -> 64" in err and str(out / "config.yaml") in err
    assert "--overwrite" in err
    assert (out / "checkpoints" / "step-000002").is_dir()  # left as it was
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["n_embd"] == 32

    assert (
        main(pretrain(tiny_tokenizer_dir, tiny_corpus, out, "model.n_embd=64", "--overwrite")) == 0
    )
    assert not any(m.get("event") == "resumed" for m in read_jsonl(out / "metrics.jsonl"))
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["n_embd"] == 64


def test_an_incompatible_checkpoint_names_the_run_config_not_model_json(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, monkeypatch, capsys
):
    import shutil

    out, other = tmp_path / "run", tmp_path / "other"
    interrupted_run(monkeypatch, tiny_tokenizer_dir, tiny_corpus, out)
    interrupted_run(monkeypatch, tiny_tokenizer_dir, tiny_corpus, other, "model.n_embd=64")
    shutil.rmtree(out / "checkpoints")
    shutil.copytree(other / "checkpoints", out / "checkpoints")  # a checkpoint of another model
    capsys.readouterr()
    assert main(pretrain(tiny_tokenizer_dir, tiny_corpus, out)) == 2
    err = error_of(capsys)
    assert "cannot resume from" in err and "does not fit this model" in err
    assert "model.json" not in err and str(out / "config.yaml") in err and "--overwrite" in err


def test_a_save_killed_mid_way_leaves_nothing_after_the_next_start(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, monkeypatch
):
    out = tmp_path / "run"
    interrupted_run(monkeypatch, tiny_tokenizer_dir, tiny_corpus, out)
    # what kill -9 during a checkpoint save and during tokenization leaves (utils.staging_dir)
    partial = out / "checkpoints" / ".step-000004.k9x2a.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    (out / ".shards.q1w2e.partial").mkdir()
    assert main(pretrain(tiny_tokenizer_dir, tiny_corpus, out)) == 0
    assert [p.name for p in out.iterdir() if p.name.endswith(".partial")] == []
    assert not (out / "checkpoints").exists()  # the finished run needs none
    events = [m for m in read_jsonl(out / "metrics.jsonl") if m.get("event") == "resumed"]
    assert [e["step"] for e in events] == [2]


def test_stale_partials_are_removed_at_the_trainers_start(tmp_path):
    """Any stage's trainer (not only pretrain's) clears what a killed save left."""
    from lmforge.train import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    (root / ".step-000004.abc.partial").mkdir(parents=True)
    (root / "step-000002").mkdir()
    (root / ".step-000002.old").mkdir()
    (root / ".state.json.x1.tmp").write_text("{")
    removed = ckpt.remove_stale_partials(root)
    assert sorted(p.name for p in removed) == [
        ".state.json.x1.tmp",
        ".step-000002.old",
        ".step-000004.abc.partial",
    ]
    assert [p.name for p in root.iterdir()] == ["step-000002"]


def test_a_failed_rerun_keeps_the_finished_run_intact(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys
):
    """A run that fails before training leaves no config without a summary: not in a new
    directory, and not in a finished run's directory it was about to re-make."""
    import shutil

    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "run"
    shutil.copy(tiny_corpus, corpus)
    assert main(pretrain(tiny_tokenizer_dir, corpus, out)) == 0
    # the same recipe again, but its corpus has lost its text column since: found while
    # re-making the shards, after the run directory was opened
    shutil.rmtree(out / "shards")
    corpus.write_text('{"body": "a document"}\n')
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(pretrain(tiny_tokenizer_dir, corpus, out)) == 2
    assert "no column 'text'" in error_of(capsys)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert (out / "summary.json").is_file() and (out / "config.yaml").is_file()


def test_a_pipeline_remakes_a_changed_stage_over_its_finished_run(
    tmp_path, tiny_corpus, tiny_tokenizer_dir
):
    """The pipeline re-runs a stage whose recipe changed: that is a replacement it asks for
    (--overwrite), not a conflict to refuse."""
    from lmforge import pipeline

    runs = tmp_path / "runs"
    line = " ".join(pretrain(tiny_tokenizer_dir, tiny_corpus, runs / "pretrain"))
    spec = {
        "name": "p",
        "vars": {"runs": str(runs)},
        "stages": {"pretrain": {"run": line, "out": str(runs / "pretrain")}},
    }
    path = tmp_path / "p.yaml"
    for extra in ("", " model.n_layer=3"):
        spec["stages"]["pretrain"]["run"] = line + extra
        path.write_text(yaml.safe_dump(spec))
        state = pipeline.run(pipeline.load(str(path)), main, echo=lambda *_: None)
        assert state["stages"]["pretrain"]["status"] == "done"
    config = yaml.safe_load((runs / "pretrain" / "config.yaml").read_text())
    assert config["model"]["n_layer"] == 3


def test_a_pipeline_remakes_a_changed_curation_over_its_corpus(tmp_path, tiny_corpus):
    """`data curate` refuses an --out holding another curation; a pipeline stage whose
    curation options changed asks for the replacement."""
    import json

    from lmforge import pipeline

    out = tmp_path / "curated"
    line = f"data curate {tiny_corpus} --out {out} --workers 1 --no-progress"
    spec = {"name": "p", "stages": {"curate": {"run": line, "out": str(out)}}}
    path = tmp_path / "p.yaml"
    for extra in ("", " --near-dup 0.5"):
        spec["stages"]["curate"]["run"] = line + extra
        path.write_text(yaml.safe_dump(spec))
        state = pipeline.run(pipeline.load(str(path)), main, echo=lambda *_: None)
        assert state["stages"]["curate"]["status"] == "done"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["curation"]["near_dedup"]["threshold"] == 0.5


def test_resume_never_clears_an_earlier_runs_checkpoints(tmp_path, tiny_cfg):
    """trainer.resume=never starts over in any stage: a later resume must not pick up the
    earlier run's newer checkpoint."""
    import torch

    from lmforge.model.transformer import LanguageModel
    from lmforge.train import checkpoint as ckpt
    from lmforge.train.objectives import clm_loss
    from lmforge.train.trainer import Trainer, TrainerConfig

    x = torch.randint(0, tiny_cfg.vocab_size, (2, 9))

    class Loader:
        def next_batch(self):
            return {"input_ids": x[:, :-1], "targets": x[:, 1:]}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    old = tmp_path / "run" / "checkpoints" / "step-000300"
    old.mkdir(parents=True)
    tc = TrainerConfig(
        max_steps=3,
        micro_batch_size=2,
        warmup_steps=1,
        checkpoint_every=2,
        precision="fp32",
        resume="never",
        progress=False,
    )
    Trainer(tc, LanguageModel(tiny_cfg), clm_loss, Loader(), tmp_path / "run").fit()
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-000002"
