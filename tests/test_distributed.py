"""Data parallelism under torchrun: 2 CPU processes (gloo) follow the loss curve of one
process, write once (rank 0), and resume each other's checkpoints."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import last_logged_step, logged_past_checkpoint, loss_by_step
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.train import distributed as dp
from lmforge.utils import read_json, read_jsonl

STEPS = 120
TINY = [
    "preset=lmforge-d2",
    "model.n_embd=64",
    "model.n_head=2",
    "model.intermediate_size=128",
    "data.seq_len=64",
    "data.val_fraction=0.1",
    "data.eval_batches=2",
    # the global batch: 4 x 2 rows per step; under 2 ranks each takes 4 x 1
    "trainer.micro_batch_size=4",
    "trainer.grad_accum_steps=2",
    "trainer.compile=false",
    "trainer.precision=fp32",
    "trainer.warmup_steps=5",
    "trainer.log_every=1",
    "trainer.progress=false",
    f"trainer.max_steps={STEPS}",
    "trainer.eval_every=60",
    "trainer.checkpoint_every=10",
    "samples.prompts=[]",
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


def torchrun(args, nproc=2, **kw) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "lmforge",
        *map(str, args),
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw
    )


def finish(proc, timeout=240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_same_curve(run, reference, tol=1e-4):
    got = loss_by_step(run)  # each step logged once, in increasing order
    assert list(got) == list(reference), "the same steps as the reference"
    worst = max(abs(got[s] - reference[s]) for s in reference)
    assert worst < tol, worst


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus, tiny_tokenizer_dir):
    """The one-process run every launch is compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(pretrain_args(tiny_tokenizer_dir, tiny_corpus, out)) == 0
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_follow_the_one_process_loss_curve(
    parallel, tmp_path, reference, tiny_corpus, tiny_tokenizer_dir
):
    out = tmp_path / parallel
    code, stdout, err = finish(
        torchrun(
            pretrain_args(tiny_tokenizer_dir, tiny_corpus, out, f"trainer.parallel={parallel}")
        )
    )
    assert code == 0, err[-3000:]
    assert_same_curve(out, loss_by_step(reference))
    # the evaluation and the final weights agree too
    summary, ref = read_json(out / "summary.json"), read_json(reference / "summary.json")
    assert summary["world_size"] == 2 and summary["parallel"] == parallel
    assert abs(summary["val_loss"] - ref["val_loss"]) < 1e-4
    assert summary["tokens_seen"] == ref["tokens_seen"] == STEPS * 8 * 64
    a, b = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    # one report, one set of files: rank 0's
    assert stdout.count("artifact:") == 1
    assert len([m for m in read_jsonl(out / "metrics.jsonl") if "val_loss" in m]) == 2


def test_fsdp_with_activation_checkpointing_follows_the_one_process_loss_curve(
    tmp_path, reference, tiny_corpus, tiny_tokenizer_dir
):
    """Each sharded block is gathered again for its recomputation in backward."""
    out = tmp_path / "fsdp-ckpt"
    args = pretrain_args(
        tiny_tokenizer_dir,
        tiny_corpus,
        out,
        "trainer.parallel=fsdp",
        "trainer.activation_checkpointing=true",
    )
    code, _, err = finish(torchrun(args))
    assert code == 0, err[-3000:]
    assert_same_curve(out, loss_by_step(reference))
    assert read_json(out / "summary.json")["activation_checkpointing"] is True


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent's pid
            found.append(int(stat.parent.name))
    return found


def _kill_after_checkpoint(proc, out, step=20, timeout=180) -> int:
    """Kill the run once it has a checkpoint at `step` or later and has logged a step past it
    (which its resume must replace, not log again); returns the last step it logged."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if logged_past_checkpoint(out, step):
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail(f"the run ended before it could be killed ({proc.returncode}); make it longer")
    # torchrun's workers live in sessions of their own: kill them, then the launcher
    for pid in _children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (out / "summary.json").exists()
    return last_logged_step(out)


def test_an_fsdp_run_resumes_in_one_process_and_back(
    tmp_path, reference, tiny_corpus, tiny_tokenizer_dir
):
    """Checkpoints hold full, named tensors: a run killed on 2 ranks (sharded state) resumes
    in 1 process, and a run killed in 1 process resumes on 2 ranks, on the same curve."""
    out = tmp_path / "fsdp-then-one"
    args = pretrain_args(tiny_tokenizer_dir, tiny_corpus, out, "trainer.parallel=fsdp")
    killed_after = _kill_after_checkpoint(torchrun(args), out)
    assert main(args) == 0  # the same command, one process
    resumed = [m for m in read_jsonl(out / "metrics.jsonl") if m.get("event") == "resumed"]
    assert len(resumed) == 1 and 20 <= resumed[0]["step"] < killed_after
    assert_same_curve(out, loss_by_step(reference))

    out = tmp_path / "one-then-fsdp"
    args = pretrain_args(tiny_tokenizer_dir, tiny_corpus, out, "trainer.parallel=fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.Popen(
        [sys.executable, "-m", "lmforge", *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    killed_after = _kill_after_checkpoint(single, out)
    code, _, err = finish(torchrun(args))
    assert code == 0, err[-3000:]
    resumed = [m for m in read_jsonl(out / "metrics.jsonl") if m.get("event") == "resumed"]
    assert len(resumed) == 1 and 20 <= resumed[0]["step"] < killed_after
    assert_same_curve(out, loss_by_step(reference))
    assert read_json(out / "summary.json")["world_size"] == 2


def test_a_world_size_that_does_not_divide_the_batch_is_refused(
    tmp_path, tiny_corpus, tiny_tokenizer_dir
):
    out = tmp_path / "three"
    code, _, err = finish(torchrun(pretrain_args(tiny_tokenizer_dir, tiny_corpus, out), nproc=3))
    assert code != 0
    assert "global batch of 8 sequences" in err and "trainer.grad_accum_steps=3" in err
    assert not out.exists()


def test_the_batch_split_keeps_the_global_batch():
    assert dp.split_batch(8, 2, 2) == (8, 1)  # accumulation is divided first
    assert dp.split_batch(8, 1, 2) == (4, 1)  # then the micro-batch
    assert dp.split_batch(8, 3, 2) == (6, 2)  # 12 rows per rank in micro-batches of at most 8
    assert dp.split_batch(4, 4, 1) == (4, 4)
    with pytest.raises(ConfigError, match="grad_accum_steps=3"):
        dp.split_batch(4, 2, 3)


def test_non_training_verbs_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["scaling", "predict", "--flops", "1e21"]) == 2
    assert "runs in one process" in capsys.readouterr().err


def test_rank_slices_cover_the_global_batch_once():
    class Batches:
        def __init__(self):
            self.n = 0

        def next_batch(self):
            self.n += 1
            rows = torch.arange(5) + 10 * self.n
            return {"input_ids": rows[:, None].repeat(1, 3), "labels": rows, "tag": "x"}

        def state_dict(self):
            return {"n": self.n}

    a, b = dp.RankSlice(Batches(), 0, 2), dp.RankSlice(Batches(), 1, 2)
    x, y = a.next_batch(), b.next_batch()
    assert sorted(x["labels"].tolist() + y["labels"].tolist()) == list(range(10, 15))
    assert x["input_ids"][:, 0].tolist() == x["labels"].tolist() and x["tag"] == "x"
    assert a.state_dict() == b.state_dict() == {"n": 1}
    # 3 and 2 of 5 rows: weights that make the mean over ranks the mean over the batch
    assert (x["loss_weight"], y["loss_weight"]) == (3 * 2 / 5, 2 * 2 / 5)
    # an epoch's last batch with fewer rows than ranks: no rank is left with an empty batch,
    # and the repeated row does not count
    short = dp.RankSlice(Batches(), 3, 4)
    short.loader.next_batch = lambda: {"labels": torch.tensor([7, 8])}
    got = short.next_batch()
    assert got["labels"].tolist() == [8] and got["loss_weight"] == 0.0
    # token targets: the share of scored tokens, not of rows
    tokens = dp.RankSlice(Batches(), 0, 2)
    tokens.loader.next_batch = lambda: {"targets": torch.tensor([[1, 2, -100], [3, -100, -100]])}
    assert tokens.next_batch()["loss_weight"] == 2 * 2 / 3


# --- the other training recipes under torchrun -----------------------------------------------


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory, tiny_tokenizer_dir):
    from helpers import tiny_config

    from lmforge.artifact import save_model_artifact
    from lmforge.model.transformer import LanguageModel
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer_dir)
    torch.manual_seed(0)
    cfg = tiny_config(
        vocab_size=tok.vocab_size,
        n_embd=64,
        intermediate_size=128,
        max_seq_len=64,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    out = tmp_path_factory.mktemp("init") / "decoder"
    save_model_artifact(out, LanguageModel(cfg), kind="causal_lm")
    tok.save(out)
    return out


def test_classify_under_fsdp_follows_one_process_and_keeps_the_best_weights(tmp_path, decoder_dir):
    """Full fine-tuning with early stopping: the best weights are gathered from the shards
    when saved and scattered back when restored; rank 0 evaluates and writes."""
    from test_baseline import topic_csv

    from lmforge.config import save_config
    from lmforge.stages.classify import ClassifyConfig

    def config(name):
        cfg = ClassifyConfig.model_validate(
            {
                "out_dir": str(tmp_path / name),
                "init": str(decoder_dir),
                "method": "full",
                "task": {"path": str(topic_csv(tmp_path)), "max_length": 16},
                "epochs": 3,
                "batch_size": 16,
                "speed": False,
                "trainer": {
                    "lr": 2e-3,
                    "warmup_steps": 5,
                    "eval_every": 10,
                    "checkpoint_every": 10,
                    "log_every": 1,
                    "progress": False,
                    "precision": "fp32",
                    "early_stop": {"metric": "val_macro_f1", "patience": 50},
                },
            }
        )
        save_config(cfg, tmp_path / f"{name}.yaml")
        return tmp_path / f"{name}.yaml"

    assert main(["classify", "train", "--config", str(config("one"))]) == 0
    code, stdout, err = finish(
        torchrun(["classify", "train", "--config", config("two"), "trainer.parallel=fsdp"])
    )
    assert code == 0, err[-3000:]
    assert_same_curve(tmp_path / "two", loss_by_step(tmp_path / "one"))
    one, two = (
        read_json(tmp_path / "one" / "summary.json"),
        read_json(tmp_path / "two" / "summary.json"),
    )
    assert two["train"]["world_size"] == 2
    events = [m["event"] for m in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "event" in m]
    assert "restored_best" in events
    assert abs(one["macro_f1"] - two["macro_f1"]) < 1e-6
    assert abs(one["val"]["accuracy"] - two["val"]["accuracy"]) < 1e-6


def test_sft_with_lora_under_ddp_follows_one_process(tmp_path, decoder_dir):
    """Answers of different lengths give ranks unequal shares of the scored tokens: weighted
    by their share, 2 ranks still average to the one-process loss."""
    import json

    from lmforge.artifact import load

    data = tmp_path / "chat.jsonl"
    colours = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black and dark"}
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What colour is the {k}?"},
                {"role": "assistant", "content": f"The {k} is {v}."},
            ]
        }
        for k, v in colours.items()
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 8))

    def args(name):
        return [
            "sft",
            "--config",
            "configs/demo/sft.yaml",
            f"init={decoder_dir}",
            f"out_dir={tmp_path / name}",
            f"data.train={data}",
            f"data.val={data}",
            "data.seq_len=32",
            "method=lora",
            "epochs=4",
            "trainer.micro_batch_size=4",
            "trainer.grad_accum_steps=1",
            "trainer.lr=1e-2",
            "trainer.warmup_steps=2",
            "trainer.progress=false",
            "trainer.precision=fp32",
            "trainer.eval_every=1000",
            "trainer.log_every=1",
            "answers.n=0",
            "trainer.parallel=ddp",
        ]

    assert main(args("one")) == 0
    code, stdout, err = finish(torchrun(args("two")))
    assert code == 0, err[-3000:]
    assert_same_curve(tmp_path / "two", loss_by_step(tmp_path / "one"))
    summary = read_json(tmp_path / "two" / "summary.json")
    assert summary["world_size"] == 2 and summary["parallel"] == "ddp"
    assert stdout.count("artifact:") <= 1
    a, b = load(tmp_path / "one").model.state_dict(), load(tmp_path / "two").model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # the merged models


def test_optimizer_state_by_name_loads_into_other_group_orders_and_old_checkpoints():
    from lmforge.train.optim import build_optimizer

    def model_and_optimizer(reverse=False):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
        opt = build_optimizer(m, 1e-2, 0.1, (0.9, 0.95), 1e-8)
        if reverse:  # the same parameters listed in another order
            opt.param_groups.reverse()
        return m, opt

    m, opt = model_and_optimizer()
    m(torch.randn(5, 3)).sum().backward()
    opt.step()
    by_name = dp.optimizer_state(m, opt, dp.DataParallel())
    assert set(by_name["state"]) == {n for n, _ in m.named_parameters()}

    m2, opt2 = model_and_optimizer(reverse=True)
    dp.load_optimizer_state(m2, opt2, by_name, dp.DataParallel())
    params2 = dict(m2.named_parameters())
    for name, p in m.named_parameters():
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[params2[name]]["exp_avg"])
    # a checkpoint written before names were used (positional) still resumes
    m3, opt3 = model_and_optimizer()
    dp.load_optimizer_state(m3, opt3, opt.state_dict(), dp.DataParallel())
    assert torch.equal(
        opt3.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    # another model's state is refused
    other = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="other trainable parameters"):
        dp.load_optimizer_state(
            other, build_optimizer(other, 1e-2, 0.1, (0.9, 0.95), 1e-8), by_name, dp.DataParallel()
        )


def test_midtrain_under_ddp_follows_one_process(tmp_path, reference):
    """A longer context from the reference decoder; rank 0 alone measures before and after."""

    def args(name):
        return [
            "midtrain",
            "--config",
            "configs/demo/midtrain-context.yaml",
            f"init={reference}",
            f"out_dir={tmp_path / name}",
            f"data.shards={reference / 'shards'}",
            "context.seq_len=384",
            "context.schedule=[]",
            "context.buckets=[0,128,384]",
            "trainer.max_steps=12",
            "trainer.micro_batch_size=2",
            "trainer.grad_accum_steps=2",
            "trainer.progress=false",
            "trainer.precision=fp32",
            "trainer.log_every=1",
            "trainer.warmup_steps=2",
            "data.eval_batches=2",
            "samples.max_new_tokens=4",
            "trainer.parallel=ddp",
        ]

    assert main(args("one")) == 0
    code, _, err = finish(torchrun(args("two")))
    assert code == 0, err[-3000:]
    assert_same_curve(tmp_path / "two", loss_by_step(tmp_path / "one"))
    one, two = (
        read_json(tmp_path / "one" / "summary.json"),
        read_json(tmp_path / "two" / "summary.json"),
    )
    assert two["before"] == one["before"] and two["world_size"] == 2
    assert abs(two["after"]["val_loss"] - one["after"]["val_loss"]) < 1e-4
