"""Mid-training: context extension with a RoPE adjustment, progressive lengths, measurement."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import WORDS
from test_pretrain import pretrain_args

from lmforge.artifact import load
from lmforge.cli import main
from lmforge.data.shards import PackedLoader, ShardDataset
from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig
from lmforge.stages.midtrain import ContextSection, ProgressiveLoader, extended_config
from lmforge.utils import read_json


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """Short documents and long ones (hundreds of words), so some exceed the new context."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("long") / "docs.jsonl"
    with open(path, "w") as f:
        for i in range(300):
            n = rng.randint(200, 320) if i % 3 == 0 else rng.randint(5, 30)
            f.write(
                json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(n)) + "."}) + "\n"
            )
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, long_corpus, tiny_tokenizer_dir):
    out = tmp_path_factory.mktemp("mid") / "base"
    args = pretrain_args(
        tiny_tokenizer_dir,
        long_corpus,
        out,
        "trainer.max_steps=20",
        "trainer.eval_every=20",
        "data.val_fraction=0.2",
        "model.max_seq_len=64",
    )
    assert main(args) == 0
    return out


MID = [
    "trainer.progress=false",
    "trainer.precision=fp32",
    "trainer.warmup_steps=2",
    "trainer.eval_every=100",
    "trainer.checkpoint_every=100",
    "trainer.log_every=1",
    "trainer.micro_batch_size=2",
    "data.eval_batches=2",
    "samples.max_new_tokens=5",
    "context.buckets=[0,32,64,128]",
]


def test_context_extension_measures_loss_by_position_before_and_after(
    tmp_path, base_run, monkeypatch
):
    shapes = []  # every training batch's (rows, tokens), as the trainer draws it
    draw = ProgressiveLoader.next_batch

    def recorded(self):
        batch = draw(self)
        shapes.append(tuple(batch["input_ids"].shape))
        return batch

    monkeypatch.setattr(ProgressiveLoader, "next_batch", recorded)
    out = tmp_path / "ctx"
    args = [
        "midtrain",
        "--config",
        "configs/demo/midtrain-context.yaml",
        f"init={base_run}",
        f"out_dir={out}",
        f"data.shards={base_run / 'shards'}",
        "context.seq_len=128",
        "context.schedule=[[0,64],[0.5,128]]",
        "context.rope_scaling=linear",
        "context.rope_theta=null",
        "trainer.max_steps=12",
        *MID,
    ]
    assert main(args) == 0
    # the progressive schedule really trained at 64 then 128 tokens, 256 tokens a batch
    assert shapes == [(4, 64)] * 6 + [(2, 128)] * 6
    s = read_json(out / "summary.json")
    assert s["context"]["from"] == 64 and s["context"]["to"] == 128
    # loss by position, before and after, over the 128 positions of the new context
    lbp = s["loss_by_position"]
    buckets = {"0-31", "32-63", "64-127"}
    assert lbp["documents"] > 0 and set(lbp["before"]) == set(lbp["after"]) == buckets
    curves = np.load(out / "loss_by_position.npy")  # (before/after, position)
    assert curves.shape == (2, 128) and np.isfinite(curves).all()
    for k, when in enumerate(("before", "after")):
        assert lbp[when] == pytest.approx(
            {
                "0-31": curves[k, :32].mean(),
                "32-63": curves[k, 32:64].mean(),
                "64-127": curves[k, 64:].mean(),
            }
        )
        assert lbp["beyond_old_context"][when] == pytest.approx(curves[k, 64:].mean())
    assert not np.allclose(curves[0], curves[1])  # training changed the model
    assert (out / "loss_by_position.png").is_file()
    # the saved model carries the new positions: 128 tokens, interpolation by 2
    cfg = load(out).config
    assert (cfg.max_seq_len, cfg.rope_scaling, cfg.rope_scaling_factor) == (128, "linear", 2.0)
    assert s["before"]["val_bpb_init"] > 0
    assert s["forgetting_bpb"] == pytest.approx(
        s["after"]["val_bpb_init"] - s["before"]["val_bpb_init"]
    )


def test_before_curve_is_the_starting_model(tmp_path, base_run):
    """Positions inside the old context: the 'before' curve is the starting model's own loss."""
    from lmforge.stages.midtrain import loss_by_position

    start = load(base_run).model
    val = ShardDataset(base_run / "shards", "val")
    curve, n = loss_by_position(start, [val], 64, max_docs=8)
    ids = torch.from_numpy(
        val.tokens(int(np.flatnonzero(val.doc_len >= 65)[0]), 0, 65).astype(np.int64)
    )
    one, _ = loss_by_position(start, [val], 64, max_docs=1)
    logits = start(ids[None, :-1])[0]
    want = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
    assert n >= 1 and np.allclose(one, want.detach().numpy(), atol=1e-5)


def test_progressive_loader_switches_phase_and_resumes_exactly(base_run):
    ds = ShardDataset(base_run / "shards", "train")

    def make(bs, n):
        return PackedLoader(ds, bs, n, seed=0)

    loader = ProgressiveLoader(make, [(0.0, 32), (0.5, 64)], total_batches=6, tokens_per_batch=128)
    shapes = [tuple(loader.next_batch()["input_ids"].shape) for _ in range(4)]
    assert shapes == [(4, 32), (4, 32), (4, 32), (2, 64)]
    state = loader.state_dict()
    following = loader.next_batch()["input_ids"]
    again = ProgressiveLoader(make, [(0.0, 32), (0.5, 64)], total_batches=6, tokens_per_batch=128)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()["input_ids"], following)


def test_a_shorter_context_or_a_bad_schedule_is_refused(tmp_path, base_run):
    old = ModelConfig(vocab_size=50, n_layer=1, n_embd=32, n_head=2, max_seq_len=256)
    with pytest.raises(ConfigError, match="below the starting model's context 256"):
        extended_config(old, ContextSection(seq_len=128))
    args = [
        "midtrain",
        "--config",
        "configs/demo/midtrain-context.yaml",
        f"init={base_run}",
        f"out_dir={tmp_path / 'x'}",
        "context.seq_len=128",
        "context.schedule=[[0.2,64]]",
        *MID,
    ]
    assert main(args) == 2
    assert (
        extended_config(old, ContextSection(seq_len=1024, rope_theta=40000.0)).rope_theta == 40000.0
    )


def test_a_new_diet_reports_each_source_and_what_was_forgotten(
    tmp_path, base_run, long_corpus, tiny_corpus, tiny_tokenizer_dir
):
    from lmforge.config import validate
    from lmforge.data.mixture import MixtureConfig, build_mixture
    from lmforge.utils import read_jsonl

    mix = validate(
        MixtureConfig,
        {
            "tokenizer": str(tiny_tokenizer_dir),
            "val_fraction": 0.2,
            "sources": [
                {"name": "old", "path": str(long_corpus), "weight": 0.2},
                {"name": "new", "path": str(tiny_corpus), "weight": 0.8},
            ],
        },
        "mixture.yaml",
    )
    build_mixture(mix, tmp_path / "mix", progress=False)
    out = tmp_path / "diet"
    args = [
        "midtrain",
        "--config",
        "configs/demo/midtrain-code.yaml",
        f"init={base_run}",
        f"out_dir={out}",
        f"mixture={tmp_path / 'mix'}",
        "data.seq_len=64",
        "trainer.max_steps=10",
        "trainer.grad_accum_steps=1",
        *MID,
    ]
    assert main(args) == 0
    s = read_json(out / "summary.json")
    for when in ("before", "after"):
        assert {"val_bpb_init", "val_bpb_old", "val_bpb_new"} <= set(s[when])
    assert s["forgetting_bpb"] == pytest.approx(
        s["after"]["val_bpb_init"] - s["before"]["val_bpb_init"]
    )
    shares = s["realised_mix"]
    assert shares["new"]["share"] > shares["old"]["share"]
    logged = [r["mix"] for r in read_jsonl(out / "metrics.jsonl") if "mix" in r]
    assert logged and set(logged[-1]) == {"old", "new"}  # the trainer logs the realised mix
    assert "loss_by_position" not in s  # the context did not change


def test_the_train_longer_baseline_is_measured_at_the_new_length_too(tmp_path, base_run):
    out = tmp_path / "same"
    args = [
        "midtrain",
        "--config",
        "configs/demo/midtrain-context.yaml",
        f"init={base_run}",
        f"out_dir={out}",
        f"data.shards={base_run / 'shards'}",
        "context.seq_len=64",
        "context.schedule=[]",
        "context.eval_len=128",
        "context.rope_theta=null",
        "trainer.max_steps=4",
        *MID,
    ]
    assert main(args) == 0
    s = read_json(out / "summary.json")
    assert s["context"]["to"] == 64 and s["loss_by_position"]["documents"] > 0
    assert set(s["loss_by_position"]["before"]) == {"0-31", "32-63", "64-127"}
