"""The pretrain stage end to end through the CLI, on a tiny corpus and model."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import last_logged_step, logged_past_checkpoint, loss_by_step

from lmforge.cli import main
from lmforge.utils import read_jsonl

TINY = [
    "preset=lmforge-d2",
    "model.n_embd=64",
    "model.n_head=2",
    "model.intermediate_size=128",
    "data.seq_len=64",
    "data.val_fraction=0.1",
    "data.eval_batches=2",
    "trainer.micro_batch_size=4",
    "trainer.grad_accum_steps=1",
    "trainer.compile=false",
    "trainer.precision=fp32",
    "trainer.warmup_steps=5",
    "trainer.log_every=1",
    "trainer.progress=false",
]


def pretrain_args(tok, corpus, out, *extra):
    return [
        "pretrain",
        "--config",
        "configs/demo/pretrain.yaml",
        f"tokenizer={tok}",
        f"data.path={corpus}",
        f"out_dir={out}",
        *TINY,
        *extra,
    ]


def test_pretrain_writes_a_complete_artifact(tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys):
    out = tmp_path / "run"
    assert (
        main(
            pretrain_args(
                tiny_tokenizer_dir,
                tiny_corpus,
                out,
                "trainer.max_steps=40",
                "trainer.eval_every=20",
                "trainer.lr=3e-3",
            )
        )
        == 0
    )
    for name in (
        "model.safetensors",
        "model.json",
        "tokenizer.json",
        "config.yaml",
        "metrics.jsonl",
        "loss.png",
        "samples.jsonl",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "final_train_loss",
        "val_loss",
        "val_bpb",
        "tokens_seen",
        "tokens_per_second",
        "params",
        "wall_seconds",
    ):
        assert summary[key] is not None, key
    assert summary["tokens_seen"] == 40 * 4 * 64
    curve = loss_by_step(out)
    assert curve[40] < curve[1] - 1.0  # it learned something
    # and the artifact loads and generates through the public API
    import lmforge
    from lmforge.infer.generate import SamplingConfig, generate_text

    loaded = lmforge.load(out)
    text = generate_text(
        loaded.model, loaded.tokenizer, "The", SamplingConfig(max_new_tokens=10, seed=0)
    )
    assert isinstance(text, str)
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "The", "-n", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("The")


def test_sigkilled_run_resumes_on_the_same_loss_curve(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    steps = [
        "trainer.max_steps=120",
        "trainer.checkpoint_every=10",
        "trainer.eval_every=1000",
        "samples.prompts=[]",
    ]
    ref = tmp_path / "ref"
    assert main(pretrain_args(tiny_tokenizer_dir, tiny_corpus, ref, *steps)) == 0
    reference = loss_by_step(ref)

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "lmforge",
        *pretrain_args(tiny_tokenizer_dir, tiny_corpus, out, *steps),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(min(2, os.cpu_count() or 1))}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    # killed after a checkpoint and after a step past it was logged: the resume must replace
    # that step, not log it again
    while time.time() < deadline and proc.poll() is None:
        if logged_past_checkpoint(out, 20):
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed; make it longer")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    killed_after = last_logged_step(out)

    assert main(pretrain_args(tiny_tokenizer_dir, tiny_corpus, out, *steps)) == 0
    events = [m for m in read_jsonl(out / "metrics.jsonl") if m.get("event") == "resumed"]
    assert len(events) == 1 and 20 <= events[0]["step"] < killed_after
    resumed = loss_by_step(out)  # each step logged once, in increasing order
    assert list(resumed) == list(reference) == list(range(1, 121))
    worst = max(abs(resumed[s] - reference[s]) for s in reference)
    assert worst < 1e-4, worst


def test_seq_len_above_the_model_maximum_is_refused(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys
):
    out = tmp_path / "run"
    code = main(pretrain_args(tiny_tokenizer_dir, tiny_corpus, out, "model.max_seq_len=32"))
    assert code == 2
    assert "data.seq_len (64) exceeds model.max_seq_len (32)" in capsys.readouterr().err
    assert not out.exists()


def test_a_csv_without_the_text_column_names_the_columns(tmp_path, tiny_tokenizer_dir, capsys):
    (tmp_path / "d.csv").write_text("id,body\n1,hello there\n")
    code = main(pretrain_args(tiny_tokenizer_dir, tmp_path / "d.csv", tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2 and "no column 'text'" in err and "id, body" in err
    assert not (tmp_path / "run").exists()


def test_mlm_encoder_pretrains_and_feeds_a_classifier(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys
):
    """configs/demo/encoder.yaml at tiny size: masked-token loss falls, accuracy is reported,
    the artifact is a masked_lm whose backbone and head a classifier starts from."""
    out = tmp_path / "enc"
    args = [
        "pretrain",
        "--config",
        "configs/demo/encoder.yaml",
        f"tokenizer={tiny_tokenizer_dir}",
        f"data.path={tiny_corpus}",
        f"out_dir={out}",
        *TINY,
        "model.local_window=16",
        "trainer.max_steps=40",
        "trainer.eval_every=20",
        "trainer.lr=3e-3",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["val_masked_accuracy"] <= 1
    losses = loss_by_step(out)
    assert losses[40] < losses[1] - 0.5
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "masked_lm" and meta["model"]["causal"] is False
    samples = read_jsonl(out / "samples.jsonl")
    assert samples and len(samples[0]["guesses"][0]) == 5

    from lmforge.artifact import load
    from lmforge.data.tasks import Task
    from lmforge.stages.classify import ClassifyConfig, build_classifier

    task = Task([("a b", 0), ("c d", 1)], [], [], ["x", "y"])
    model, _, head_modules = build_classifier(ClassifyConfig(init=str(out), method="probe"), task)
    assert model.head_cfg.pooling == "mean" and model.head_cfg.head == "dense_norm"
    enc = load(out).model.state_dict()
    for k in ("head.dense.weight", "model.layers.0.mlp.up_proj.weight"):
        assert (model.state_dict()[k] == enc[k]).all()
    assert head_modules == ["classifier", "head"]


def test_mlm_with_a_causal_model_is_a_clear_error(
    tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys
):
    out = tmp_path / "bad"
    args = pretrain_args(tiny_tokenizer_dir, tiny_corpus, out, "objective=mlm")
    assert main(args) == 2
    assert "model.causal=false" in capsys.readouterr().err
    assert not out.exists()
