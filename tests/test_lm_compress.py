"""Compressing language models: int8/int4 with val bits-per-byte, and per-token distillation."""

import pytest
import torch
import torch.nn.functional as F
from test_pretrain import pretrain_args

from lmforge.artifact import load
from lmforge.cli import main
from lmforge.data.shards import ShardDataset, iter_eval_batches
from lmforge.errors import ConfigError
from lmforge.stages.quantize import quantize
from lmforge.utils import read_json


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_corpus, tiny_tokenizer_dir):
    out = tmp_path_factory.mktemp("lm") / "teacher"
    steps = ["trainer.max_steps=40", "trainer.eval_every=40", "trainer.lr=3e-3"]
    assert main(pretrain_args(tiny_tokenizer_dir, tiny_corpus, out, *steps)) == 0
    return out


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_lm_reports_val_bpb_next_to_its_source(teacher_run, tmp_path, method):
    summary = quantize(teacher_run, tmp_path / method, method, group_size=32)
    assert summary["val_bpb"] > 0 and summary["source_val_bpb"] > 0
    assert summary["val_bpb_change"] == pytest.approx(
        summary["val_bpb"] - summary["source_val_bpb"]
    )
    # the source re-measured in fp32 on the same batches is what pretrain reported (autocast
    # aside), and 8 or 4 bits cost little on this tiny model
    assert summary["source_val_bpb"] == pytest.approx(
        read_json(teacher_run / "summary.json")["val_bpb"], rel=0.02
    )
    assert abs(summary["val_bpb_change"]) < (0.02 if method == "int8" else 0.2)
    assert summary["checkpoint_mb"] < summary["source_checkpoint_mb"]
    assert load(tmp_path / method).meta["quantization"]["method"] == method


def _kl_to_teacher(student_dir, teacher_dir, shards):
    teacher, student = load(teacher_dir).model.eval(), load(student_dir).model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in iter_eval_batches(ShardDataset(shards, "val"), 4, 64, 4):
            t = F.log_softmax(teacher(batch["input_ids"]), -1).flatten(0, 1)
            s = F.log_softmax(student(batch["input_ids"]), -1).flatten(0, 1)
            total += F.kl_div(s, t, reduction="sum", log_target=True).item()
            n += t.shape[0]
    return total / n


def test_lm_distillation_pulls_the_student_toward_the_teacher(
    teacher_run, tmp_path, tiny_corpus, tiny_tokenizer_dir
):
    shards = f"data.shards={teacher_run / 'shards'}"
    small = [
        "trainer.max_steps=25",
        "trainer.eval_every=25",
        "trainer.lr=3e-3",
        "model.n_embd=32",
        "model.intermediate_size=64",
        shards,
    ]
    runs = {}
    for name, extra in {
        "vanilla": [],
        "distilled": [f"distill.teacher={teacher_run}", "distill.alpha=0.9"],
    }.items():
        runs[name] = tmp_path / name
        args = pretrain_args(tiny_tokenizer_dir, tiny_corpus, runs[name], *small, *extra)
        assert main(args) == 0
    summary = read_json(runs["distilled"] / "summary.json")
    assert summary["distill"]["teacher_val_bpb"] == pytest.approx(
        read_json(teacher_run / "summary.json")["val_bpb"], rel=0.02
    )
    assert summary["distill"]["teacher_params"] > summary["params"]
    kl = {k: _kl_to_teacher(v, teacher_run, teacher_run / "shards") for k, v in runs.items()}
    assert kl["distilled"] < 0.9 * kl["vanilla"], kl


def test_lm_distillation_refuses_a_teacher_with_another_tokenizer(
    teacher_run, tmp_path, tiny_corpus
):
    from lmforge.data.vocab import train_tokenizer_from_path

    other = tmp_path / "tok300"
    train_tokenizer_from_path(tiny_corpus, 300, other, progress=False)
    args = pretrain_args(other, tiny_corpus, tmp_path / "s", f"distill.teacher={teacher_run}")
    with pytest.raises(ConfigError, match="another tokenizer"):
        from lmforge.config import load_config
        from lmforge.stages.pretrain import PretrainConfig, run

        run(load_config(PretrainConfig, "configs/demo/pretrain.yaml", args[3:]))
    assert not (tmp_path / "s").exists()  # refused before anything was written
