import math

import numpy as np
import pytest
import torch
from helpers import loss_by_step

from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import LanguageModel
from lmforge.train import checkpoint as ckpt
from lmforge.train.objectives import clm_loss
from lmforge.train.optim import lr_factor, param_groups
from lmforge.train.trainer import Trainer, TrainerConfig
from lmforge.utils import read_jsonl, seed_everything


class ArrayLoader:
    """Deterministic random windows over a token array; position is the whole state."""

    def __init__(self, tokens, batch, seq, seed=0):
        self.tokens, self.batch, self.seq, self.seed, self.pos = tokens, batch, seq, seed, 0
        self.poison_at = None

    def next_batch(self):
        rng = np.random.default_rng(self.seed + self.pos)
        starts = rng.integers(0, len(self.tokens) - self.seq - 1, self.batch)
        rows = np.stack([self.tokens[s : s + self.seq + 1] for s in starts])
        batch = {
            "input_ids": torch.from_numpy(rows[:, :-1]).long(),
            "targets": torch.from_numpy(rows[:, 1:]).long(),
        }
        batch["poison"] = torch.tensor(self.pos == self.poison_at)
        self.pos += 1
        return batch

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def tokens(n=4000, vocab=61, seed=0):
    # a learnable stream: a repeating pattern with noise
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(vocab), n // vocab + 1)[:n]
    noise = rng.random(n) < 0.1
    return np.where(noise, rng.integers(0, vocab, n), base)


def make(tmp_path, max_steps=20, **kw):
    seed_everything(0)
    cfg = ModelConfig(
        vocab_size=61, n_layer=2, n_embd=32, n_head=4, intermediate_size=64, max_seq_len=32
    )
    tc = TrainerConfig(
        max_steps=max_steps,
        micro_batch_size=4,
        lr=3e-3,
        warmup_steps=5,
        precision="fp32",
        progress=False,
        log_every=1,
        eval_every=10,
        checkpoint_every=5,
        **kw,
    )
    return Trainer(
        tc,
        LanguageModel(cfg),
        clm_loss,
        ArrayLoader(tokens(), 4, 32),
        tmp_path,
        tokens_per_micro_batch=4 * 32,
    )


def test_loss_decreases_on_a_learnable_stream(tmp_path):
    summary = make(tmp_path, max_steps=40).fit()
    curve = loss_by_step(tmp_path)
    assert curve[40] < curve[1] - 1.0
    assert summary["steps"] == 40 and summary["tokens_seen"] == 40 * 4 * 32


@pytest.mark.parametrize(
    "optimizer, stop, saved",
    [
        # Ctrl-C (or SIGTERM) inside step 14: step 13 is checkpointed on the way out
        ("adamw", KeyboardInterrupt, 13),
        ("muon", KeyboardInterrupt, 13),
        # a crash: the periodic checkpoint of step 10 stands, steps 11-13 are done again
        ("adamw", RuntimeError, 10),
    ],
)
def test_resume_continues_same_loss_curve(tmp_path, optimizer, stop, saved):
    make(tmp_path / "a", optimizer=optimizer).fit()
    reference = loss_by_step(tmp_path / "a")
    t = make(tmp_path / "b", optimizer=optimizer)
    calls = []

    def stopping(model, batch):
        calls.append(1)
        if len(calls) == 14:
            raise stop
        return clm_loss(model, batch)

    t.loss_fn = t._loss = stopping
    with pytest.raises(stop):
        t.fit()
    assert list(loss_by_step(tmp_path / "b")) == list(range(1, 14))
    assert ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints").name == f"step-{saved:06d}"
    resumed = make(tmp_path / "b", optimizer=optimizer)
    resumed.fit()
    assert resumed.step == 20
    # each step once, in order (loss_by_step checks), on the uninterrupted run's curve: the
    # interrupted step 14 drew the same batch again
    curve = loss_by_step(tmp_path / "b")
    assert list(curve) == list(range(1, 21))
    for step in range(1, 21):
        assert abs(curve[step] - reference[step]) < 1e-4, step


def test_sigterm_checkpoints_like_ctrl_c(tmp_path):
    import os
    import signal

    t = make(tmp_path)
    calls = []

    def terminated(model, batch):
        calls.append(1)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill <pid>` or a scheduler would
        return clm_loss(model, batch)

    t.loss_fn = t._loss = terminated
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is the caller's again
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step-000007"


def test_muon_takes_the_block_matrices_and_adamw_the_rest(tmp_path):
    t = make(tmp_path, max_steps=40, optimizer="muon")
    muon, adamw = t.optimizer.parts
    names = {id(p): n for n, p in t.model.named_parameters()}
    to_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    to_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert to_muon == {n for n, p in t.model.named_parameters() if ".layers." in n and p.ndim == 2}
    assert to_adamw == set(names.values()) - to_muon
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= to_adamw
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.fit()
    curve = loss_by_step(tmp_path)
    assert curve[40] < curve[1] - 1.0  # it learns
    assert all(not torch.equal(before[n], p) for n, p in t.model.named_parameters())
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(
        3e-3 * lr_factor(39, 40, 5, "cosine", 0.1)
    )


def test_our_muon_is_torch_muon_with_the_iteration_in_a_dtype_we_choose():
    """torch.optim.Muon (match_rms_adamw) runs Newton-Schulz in bf16 only; ours takes the dtype
    (fp32 where bf16 is emulated). In bf16 they agree; in fp32 the result is close, and the
    update's singular values sit in Newton-Schulz's band around 1."""
    from lmforge.train.optim import Muon, orthogonalize

    torch.manual_seed(0)
    g = torch.randn(48, 80)
    s = torch.linalg.svdvals(orthogonalize(g))
    assert 0.6 < s.min() and s.max() < 1.25 and not torch.allclose(s, torch.ones_like(s), atol=0.01)
    tall = torch.linalg.svdvals(orthogonalize(g.T))  # tall matrices through their transpose
    assert torch.allclose(tall, s, atol=1e-5)
    for dtype, tol in ((torch.bfloat16, 1e-6), (torch.float32, 2e-3)):
        w0 = torch.randn(48, 80)
        ours, ref = w0.clone().requires_grad_(), w0.clone().requires_grad_()
        a = Muon([ours], lr=0.02, weight_decay=0.1, dtype=dtype)
        b = torch.optim.Muon([ref], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        for _ in range(3):
            grad = torch.randn(48, 80)
            ours.grad, ref.grad = grad.clone(), grad.clone()
            a.step()
            b.step()
        assert (ours - ref).abs().max() < tol, dtype
        assert (ours - w0).abs().max() > 0.01  # it moved


def test_loss_spike_rolls_back_and_skips_the_batch(tmp_path):
    t = make(tmp_path, max_steps=30, spike={"min_history": 5, "sigma": 6.0})
    t.loader.poison_at = 17

    def poisoned(model, batch):
        loss, n = clm_loss(model, batch)
        return loss * (1000.0 if bool(batch["poison"]) else 1.0), n

    t.loss_fn = t._loss = poisoned
    summary = t.fit()
    events = [m for m in read_jsonl(tmp_path / "metrics.jsonl") if m.get("event") == "loss_spike"]
    assert len(events) == 1 and events[0]["rolled_back_to"] == 15
    assert summary["steps"] == 30 and summary["rollbacks"] == 1
    assert math.isfinite(summary["final_train_loss"]) and summary["final_train_loss"] < 5


def test_nan_loss_is_a_spike_and_too_many_stop_the_run(tmp_path):
    t = make(tmp_path, max_steps=10, spike={"max_rollbacks": 2})
    t.loss_fn = t._loss = lambda m, b: (clm_loss(m, b)[0] * float("nan"), 1)
    with pytest.raises(RuntimeError, match="unstable"):
        t.fit()


def test_crash_during_checkpoint_leaves_previous_intact(tmp_path, monkeypatch):
    t = make(tmp_path, max_steps=12)
    t.fit()
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step-000010"

    def torn_write(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", torn_write)
    with pytest.raises(OSError):
        t.save_checkpoint()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000005", "step-000010"]  # nothing half-written, nothing lost
    monkeypatch.undo()
    fresh = make(tmp_path, max_steps=12)
    assert fresh.maybe_resume() and fresh.step == 10


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    make(tmp_path, max_steps=12).fit()
    weights = tmp_path / "checkpoints" / "step-000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="step-000010.*(damaged|truncated)"):
        make(tmp_path, max_steps=20).fit()


def test_checkpoint_from_another_config_names_the_mismatch(tmp_path):
    make(tmp_path, max_steps=12).fit()
    model = LanguageModel(
        ModelConfig(
            vocab_size=61, n_layer=2, n_embd=64, n_head=4, intermediate_size=64, max_seq_len=32
        )
    )
    with pytest.raises(CheckpointError, match="different model config"):
        ckpt.load_weights(model, tmp_path / "checkpoints" / "step-000010" / "model.safetensors")


def test_schedules():
    f = lambda step, sched: lr_factor(step, 100, 10, sched, 0.1, decay_fraction=0.2)  # noqa: E731
    assert f(0, "cosine") == pytest.approx(0.1) and f(9, "cosine") == pytest.approx(1.0)
    assert f(10, "cosine") == pytest.approx(1.0) and f(100, "cosine") == pytest.approx(0.1)
    assert f(55, "cosine") == pytest.approx(0.55)
    assert (
        f(79, "wsd") == 1.0
        and f(90, "wsd") == pytest.approx(0.55)
        and f(100, "wsd") == pytest.approx(0.1)
    )
    assert f(55, "linear") == pytest.approx(0.55) and f(50, "constant") == 1.0


def test_no_weight_decay_on_norms_biases_embeddings():
    cfg = ModelConfig(
        vocab_size=61, n_layer=1, n_embd=32, n_head=4, intermediate_size=64, attn_qkv_bias=True
    )
    model = LanguageModel(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in param_groups(model, 0.1):
        for p in group["params"]:
            n = names[id(p)]
            decayed = group["weight_decay"] > 0
            assert decayed == (n.endswith("proj.weight") or n == "lm_head.weight"), n


def test_tokens_per_step_sets_accumulation(tmp_path):
    t = make(tmp_path, max_steps=2, tokens_per_step=512)  # 512 / (4 * 32) = 4 micro-batches
    assert t.grad_accum == 4
    t.fit()
    assert t.tokens_seen == 2 * 512


def test_tensorboard_event_files_hold_the_logged_loss(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = make(tmp_path, max_steps=6, tensorboard=True)
    t.fit()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert "loss" in acc.Tags()["scalars"]
    logged = loss_by_step(tmp_path)
    tb = {e.step: e.value for e in acc.Scalars("loss")}
    assert set(tb) == set(logged)
    assert all(abs(tb[s] - logged[s]) < 1e-5 for s in tb)


def test_early_stopping_stops_on_patience_and_restores_the_best_weights(tmp_path):
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.1])
    snapshots = {}

    def eval_fn(model):
        snapshots[len(snapshots)] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"val_macro_f1": next(scores)}

    t = make(tmp_path, max_steps=60, early_stop={"metric": "val_macro_f1", "patience": 2})
    t.eval_fn, t.cfg.eval_every = eval_fn, 5
    summary = t.fit()
    # evals at steps 5, 10, 15, 20: best at step 10, then two worse ones -> stop at step 20
    assert t.step == 20 and summary["stopped_early"]
    assert summary["val_macro_f1"] == 0.5
    best = snapshots[1]
    assert all(torch.equal(v, best[k]) for k, v in t.model.state_dict().items())
    events = [m["event"] for m in read_jsonl(tmp_path / "metrics.jsonl") if "event" in m]
    assert events == ["early_stop", "restored_best"]


def test_early_stop_metric_must_exist(tmp_path):
    t = make(tmp_path, max_steps=10, early_stop={"metric": "val_f1"})
    t.eval_fn, t.cfg.eval_every = (lambda m: {"val_loss": 1.0}), 5
    with pytest.raises(KeyError, match="val_f1"):
        t.fit()


def test_epochs_set_the_length_and_a_max_steps_the_user_set_caps_it(capsys):
    from lmforge.config import load_config
    from lmforge.train.trainer import steps_for_epochs

    # 2 epochs of 100 rows at 8 x 2 rows per step: 12.5 -> 12 steps
    assert steps_for_epochs(2, 100, 16, TrainerConfig(), "sft") == (12, 12)
    capped = load_config(TrainerConfig, None, ["max_steps=5"])
    assert steps_for_epochs(2, 100, 16, capped, "sft") == (5, 12)
    assert "trainer.max_steps=5 caps training at 5 steps (2 epochs would take 12)" in (
        capsys.readouterr().out
    )
    # a cap above what the epochs imply changes nothing
    assert steps_for_epochs(
        2, 100, 16, load_config(TrainerConfig, None, ["max_steps=50"]), "x"
    ) == (
        12,
        12,
    )


def _count_block_runs(trainer) -> list[bool]:
    """Whether the first block's MLP ran in training mode, per call (a hook would miss the
    recomputation: checkpointing re-runs the block with hooks off)."""
    mlp, calls = trainer.model.model.layers[0].mlp, []
    forward = mlp.forward

    def counting(*args, **kw):
        calls.append(mlp.training)
        return forward(*args, **kw)

    mlp.forward = counting
    return calls


def test_activation_checkpointing_recomputes_each_block_on_the_same_loss_curve(tmp_path):
    plain = make(tmp_path / "plain", max_steps=8)
    plain_calls = _count_block_runs(plain)
    plain.fit()
    t = make(tmp_path / "ckpt", max_steps=8, activation_checkpointing=True)
    calls = _count_block_runs(t)
    summary = t.fit()
    # each training step runs the block twice (forward, then again in backward)
    assert plain_calls.count(True) == 8 and calls.count(True) == 2 * 8
    assert summary["activation_checkpointing"] is True
    a, b = loss_by_step(tmp_path / "plain"), loss_by_step(tmp_path / "ckpt")
    assert list(a) == list(b)
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, step


def test_activation_checkpointing_needs_our_transformer(tmp_path):
    with pytest.raises(ConfigError, match="no lmforge Transformer blocks"):
        Trainer(
            TrainerConfig(max_steps=1, progress=False, activation_checkpointing=True),
            torch.nn.Linear(2, 2),
            clm_loss,
            ArrayLoader(tokens(), 4, 32),
            tmp_path,
        )
