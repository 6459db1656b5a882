"""precision: auto follows the hardware: bf16 only where this machine's bf16 matmuls win."""

import pytest
import torch

from lmforge.train import device
from lmforge.utils import read_jsonl

CPU = torch.device("cpu")


@pytest.fixture
def fake_cpu(monkeypatch, tmp_path):
    """A CPU with the given flags and matmul rates; counts the measurements made."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    measured = []

    def make(flags, fp32_gflops=400.0, bf16_gflops=400.0):
        monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags))

        def rate(dtype, n=1024, repeats=3):
            measured.append(dtype)
            return bf16_gflops if dtype == torch.bfloat16 else fp32_gflops

        monkeypatch.setattr(device, "matmul_gflops", rate)
        device.cpu_precision.cache_clear()
        return measured

    yield make
    device.cpu_precision.cache_clear()


def test_auto_is_fp32_without_bf16_instructions_and_measures_nothing(fake_cpu):
    measured = fake_cpu({"avx2", "fma"}, bf16_gflops=10_000.0)
    choice = device.choose_precision("auto", CPU)
    assert choice.precision == "fp32"
    assert "no bf16 instructions" in choice.reason
    assert measured == []  # emulated bf16 is never worth a measurement


@pytest.mark.parametrize(
    "fp32, bf16, want",
    [
        (402.0, 2862.0, "bf16"),  # AMX (DESIGN.md's numbers)
        (417.0, 231.0, "fp32"),  # AVX-512 BF16 without AMX: bf16 is slower
        (400.0, 560.0, "fp32"),  # faster, but not by enough to pay for autocast's casts
    ],
)
def test_auto_takes_bf16_only_where_it_measured_faster(fake_cpu, fp32, bf16, want):
    fake_cpu({"avx512f", "avx512_bf16", "amx_bf16"}, fp32, bf16)
    choice = device.choose_precision("auto", CPU)
    assert choice.precision == want
    assert (choice.fp32_gflops, choice.bf16_gflops) == (fp32, bf16)
    assert f"{bf16:,.0f}" in choice.reason and f"{fp32:,.0f}" in choice.reason


def test_measurement_is_cached_per_machine_and_per_onednn_isa_cap(fake_cpu, monkeypatch):
    measured = fake_cpu({"avx512_bf16", "amx_bf16"}, 400.0, 2800.0)
    assert device.cpu_precision().precision == "bf16"
    assert len(measured) == 2
    device.cpu_precision.cache_clear()  # a new process on the same machine reads the file
    assert device.cpu_precision().precision == "bf16"
    assert len(measured) == 2
    # oneDNN capped below AMX is another machine as far as bf16 goes: measure again
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    fake_cpu({"avx512_bf16", "amx_bf16"}, 400.0, 230.0)
    assert device.cpu_precision().precision == "fp32"
    assert len(measured) == 4


def test_a_damaged_cache_is_measured_again(fake_cpu, tmp_path):
    measured = fake_cpu({"avx512_bf16"}, 400.0, 230.0)
    path = tmp_path / "cache" / "lmforge" / "precision.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert device.cpu_precision().precision == "fp32"
    assert len(measured) == 2


def test_explicit_precision_is_kept_and_says_so(fake_cpu):
    measured = fake_cpu({"avx2"})
    choice = device.choose_precision("bf16", CPU)
    assert choice.precision == "bf16" and "set in the config" in choice.reason
    assert measured == []


def test_real_measurement_returns_positive_rates():
    assert device.matmul_gflops(torch.float32, n=64, repeats=1) > 0


def test_the_trainer_reports_its_precision_and_why(fake_cpu, tmp_path):
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import LanguageModel
    from lmforge.train.objectives import clm_loss
    from lmforge.train.trainer import Trainer, TrainerConfig

    fake_cpu({"avx512_bf16"}, 400.0, 231.0)
    x = torch.randint(0, 31, (2, 9))

    class Loader:
        def next_batch(self):
            return {"input_ids": x[:, :-1], "targets": x[:, 1:]}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    cfg = ModelConfig(vocab_size=31, n_layer=1, n_embd=16, n_head=2, intermediate_size=32)
    tc = TrainerConfig(
        max_steps=2,
        micro_batch_size=2,
        warmup_steps=1,
        eval_every=0,
        checkpoint_every=0,
        log_every=1,
        progress=False,
    )
    trainer = Trainer(tc, LanguageModel(cfg), clm_loss, Loader(), tmp_path / "run")
    summary = trainer.fit()
    assert summary["precision"] == "fp32"
    assert "231" in summary["precision_reason"]


def test_throughput_pauses_eval_and_checkpoint_time_without_dropping_tokens(tmp_path, monkeypatch):
    """tokens/s (and MFU from it) is tokens over training time. Evaluation and checkpoints in
    the middle of a log window used to restart the window's clock but keep its tokens, which
    doubled the rate (MFU 130% on the demo's tiny encoder). A fake clock: 1 s per step, 50 s
    per evaluation, 30 s per checkpoint, at steps that do not fall on log lines."""
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import LanguageModel
    from lmforge.train import trainer as trainer_mod
    from lmforge.train.objectives import clm_loss

    clock = {"t": 0.0}
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: clock["t"])
    x = torch.randint(0, 31, (2, 9))

    class Loader:
        def next_batch(self):
            clock["t"] += 1.0
            return {"input_ids": x[:, :-1], "targets": x[:, 1:]}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    def eval_fn(model):
        clock["t"] += 50.0
        return {"val_loss": 1.0}

    cfg = ModelConfig(vocab_size=31, n_layer=1, n_embd=16, n_head=2, intermediate_size=32)
    tc = trainer_mod.TrainerConfig(
        max_steps=20,
        micro_batch_size=2,
        warmup_steps=1,
        eval_every=5,
        checkpoint_every=3,
        log_every=4,
        progress=False,
        precision="fp32",
        peak_flops=1e6,
    )
    t = trainer_mod.Trainer(
        tc,
        LanguageModel(cfg),
        clm_loss,
        Loader(),
        tmp_path / "run",
        eval_fn=eval_fn,
        tokens_per_micro_batch=16,
        flops_per_token=1e3,
    )
    save = t.save_checkpoint

    def slow_save(*a, **k):
        clock["t"] += 30.0
        return save(*a, **k)

    monkeypatch.setattr(t, "save_checkpoint", slow_save)
    summary = t.fit()
    rows = [m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "tokens_per_s" in m]
    assert [r["step"] for r in rows] == [4, 8, 12, 16, 20]
    assert all(r["tokens_per_s"] == pytest.approx(16.0) for r in rows)  # 16 tokens per 1 s step
    assert all(r["mfu"] == pytest.approx(16.0 * 1e3 / 1e6) for r in rows)
    assert summary["tokens_per_second"] == pytest.approx(16.0)
