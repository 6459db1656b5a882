"""`lmforge estimate`'s arithmetic against real models and real training steps.

Peak memory is measured with torch's profiler (profile_memory=True): it reports every
allocation and free of the CPU allocator with its size, so summing them in order gives the live
tensor bytes at each moment of one step; the tensors resident before it (weights, AdamW states
after a first step, the batch) are added by their storage sizes. Peak RSS would be the wrong
ruler: it is process-wide (imports, earlier tests, the allocator's cache) and never goes down.
`test_profiled_peak_counts_live_tensors` checks the ruler itself on known allocations.
"""

import pytest
import torch

from lmforge.artifact import save_model_artifact
from lmforge.errors import ConfigError
from lmforge.eval.estimate import (
    calibrate,
    estimate,
    format_estimate,
    measure,
    resolve_model,
)
from lmforge.eval.estimate.measured import _fastest_step, _profiled_peak_bytes
from lmforge.eval.scaling_laws import accounting
from lmforge.model.build import build_model
from lmforge.model.config import ModelConfig, from_preset
from lmforge.model.lora import inject_lora

# Big enough that the logits, the blocks' activations and the weights all count (5-30 MB each),
# small enough that a step takes well under a second on 2 cores.
DECODER = dict(
    vocab_size=4096,
    n_layer=3,
    n_embd=192,
    n_head=3,
    n_kv_head=1,
    intermediate_size=512,
    max_seq_len=128,
)
ENCODER = dict(
    DECODER,
    causal=False,
    norm="layernorm",
    mlp="geglu",
    activation="gelu",
    embed_norm=True,
    first_attn_norm=False,
    tie_embeddings=True,
    n_kv_head=None,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Memory is counted in bytes, not seconds; one thread keeps the steps quick when other
    processes share the 2 cores (two threads then wait on each other: up to 40x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model, trainable=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def test_profiled_peak_counts_live_tensors():
    def step():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 19)  # 2 MiB: 6 MiB live
        del a
        c = torch.ones(1 << 18)  # 1 MiB: 3 MiB live
        return b, c

    assert _profiled_peak_bytes(step) == 6 * 2**20


@pytest.mark.parametrize(
    "method, dtype, batch, seq, options, shape",
    [
        ("full", "fp32", 4, 96, {}, {}),
        ("full", "bf16", 4, 96, {}, {}),
        ("lora", "bf16", 4, 96, {"lora_dropout": 0.05}, {}),
        ("lora", "fp32", 4, 96, {"num_labels": 5}, {}),
        ("inference", "bf16", 4, 96, {}, {}),
        # a short batch: the gradients, not the activations, set the peak
        ("full", "bf16", 1, 16, {}, {"tie_embeddings": True}),
    ],
)
def test_estimated_peak_memory_is_within_20_percent_of_a_real_step(
    method, dtype, batch, seq, options, shape
):
    cfg = ModelConfig(**{**DECODER, **shape})
    measured = measure(cfg, method, batch, seq, dtype, **options)
    estimated = estimate(cfg, method, batch, seq, dtype, **options)
    assert measured["peak_mb"] > 5  # a real step, not noise
    assert estimated["memory_mb"]["total"] == pytest.approx(measured["peak_mb"], rel=0.2)
    assert (estimated["params"], estimated["trainable"]) == (
        measured["params"],
        measured["trainable"],
    )


def test_parameter_counts_equal_the_built_models():
    dec, enc = ModelConfig(**DECODER), ModelConfig(**ENCODER)
    # full: the language model; an encoder's masked-LM head
    assert estimate(dec, "full", 1, 8, "fp32")["params"] == n_params(build_model("causal_lm", dec))
    assert estimate(enc, "full", 1, 8, "fp32")["params"] == n_params(build_model("masked_lm", enc))
    # LoRA on the attention projections (Hugging Face names too) + the classifier head
    head = {"head": "dense_norm", "pooling": "mean", "bias": True, "num_labels": 7}  # classify.py
    model = build_model("sequence_classifier", enc, {"head": head})
    inject_lora(
        model,
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        r=8,
        alpha=16,
        modules_to_save=["classifier", "head"],
    )
    e = estimate(enc, "lora", 1, 8, lora_r=8, lora_targets=("Wqkv", "o_proj"), num_labels=7)
    assert (e["params"], e["trainable"]) == (n_params(model), n_params(model, trainable=True))
    # probe: only the decoder's linear head trains
    model = build_model("sequence_classifier", dec, {"head": {"num_labels": 3}})
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("classifier")
    e = estimate(dec, "probe", 1, 8, num_labels=3)
    assert (e["params"], e["trainable"]) == (n_params(model), n_params(model, trainable=True))


def test_qwen_preset_has_the_real_models_counts():
    cfg = from_preset("qwen2.5-0.5b")
    full = estimate(cfg, "full", 32, 128, "bf16")
    assert full["params"] == 494_032_768  # Qwen2.5-0.5B's published count
    # the course's LoRA classifier (r 16 on q/k/v/o + the score head over 113 labels)
    assert estimate(cfg, "lora", 32, 128, "bf16", num_labels=113)["trainable"] == 2_263_936
    m = full["memory_mb"]
    assert m["weights"] == m["gradients"] == pytest.approx(494_032_768 * 4 / 2**20)
    assert m["optimizer"] == pytest.approx(2 * m["weights"])
    assert m["total_checkpointed"] < m["total"]


def test_flops_follow_the_method():
    cfg = ModelConfig(**DECODER)
    b, t = 4, 96
    full = estimate(cfg, "full", b, t)["flops_per_step"]
    assert full == pytest.approx(accounting(cfg, t, b * t)["flops"])  # 6N + attention, per token
    assert estimate(cfg, "inference", b, t)["flops_per_step"] == pytest.approx(full / 3)
    lora = estimate(cfg, "lora", b, t)["flops_per_step"]
    assert full / 3 < lora < full  # the backward still runs through the frozen base
    dpo = estimate(cfg, "dpo", b, t)
    assert dpo["tokens_per_step"] == 2 * b * t  # chosen + rejected
    assert dpo["flops_per_step"] == pytest.approx(2 * full * 4 / 3)  # + the reference's forward
    assert dpo["memory_mb"]["reference_weights"] == dpo["memory_mb"]["weights"]


def test_gradient_accumulation_keeps_gradients_live():
    cfg = ModelConfig(**DECODER)
    one = estimate(cfg, "full", 4, 96, "fp32")["memory_mb"]
    two = estimate(cfg, "full", 4, 96, "fp32", grad_accum_steps=2)["memory_mb"]
    assert one["activations"] > one["gradients"]
    assert two["total"] - one["total"] == pytest.approx(one["gradients"])


def test_fits_line_answers_the_budget():
    cfg = from_preset("qwen2.5-0.5b")
    d = estimate(cfg, "full", 32, 128, "bf16")
    need = d["memory_mb"]["total"] / 1024
    text = format_estimate(d, memory_budget_gb=16)
    assert f"fits in 16 GB: {'yes' if need <= 16 else 'no'} (needs {need:.1f} GB;" in text
    assert "fits in 100 GB: yes" in format_estimate(d, memory_budget_gb=100)
    assert "fits in" not in format_estimate(d)


def test_resolve_model_from_preset_yaml_and_directories(tmp_path):
    assert resolve_model("lmforge-d2") == ("decoder", from_preset("lmforge-d2"))
    assert resolve_model("modernbert-base")[0] == "encoder"

    config = tmp_path / "pretrain.yaml"  # a stage config: a preset and overrides
    config.write_text("preset: lmforge-d2\nmodel:\n  n_layer: 3\n  vocab_size: 1000\n")
    kind, cfg = resolve_model(str(config))
    assert (kind, cfg.n_layer, cfg.n_embd, cfg.vocab_size) == ("decoder", 3, 128, 1000)

    artifact = tmp_path / "run"  # what a stage writes
    save_model_artifact(artifact, build_model("masked_lm", ModelConfig(**ENCODER)), "masked_lm")
    assert resolve_model(str(artifact)) == ("encoder", ModelConfig(**ENCODER))
    config = tmp_path / "classify.yaml"  # a stage config that starts from it
    config.write_text(f"init: {artifact}\nmethod: lora\n")
    assert resolve_model(str(config)) == ("encoder", ModelConfig(**ENCODER))

    from lmforge.model.hf import config_to_hf
    from lmforge.utils import write_json

    hf_dir = tmp_path / "hf"  # a Hugging Face checkpoint: only config.json is read
    hf_dir.mkdir()
    qwen = from_preset("qwen2.5-0.5b")
    write_json(hf_dir / "config.json", config_to_hf("causal_lm", qwen, {}, "float32"))
    assert estimate(resolve_model(str(hf_dir))[1], "full", 1, 8)["params"] == 494_032_768


def test_bad_specs_say_what_to_give(tmp_path):
    with pytest.raises(ConfigError, match="qwen2.5-0.5b") as e:
        resolve_model("qwen2.5-0.5")
    assert "Did you mean 'qwen2.5-0.5b'" in str(e.value) and "lmforge-d6" in str(e.value)
    config = tmp_path / "sft.yaml"
    config.write_text("init: runs/nowhere/sft\n")
    with pytest.raises(ConfigError, match=r"init in .*sft.yaml: 'runs/nowhere/sft' does not exist"):
        resolve_model(str(config))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="method"):
        estimate(from_preset("lmforge-d2"), "qlora", 1, 8)


def test_fastest_step_takes_the_least_disturbed_of_3_to_10_steps(monkeypatch):
    """Timed on a fake clock: each step 'takes' the next of a list of durations."""
    import time

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def steps(durations):
        todo = iter(durations)

        def step():
            clock[0] += next(todo)

        return step

    # durations in powers of 2, so that the fake clock's sums are exact
    assert _fastest_step(steps([0.5, 0.125, 0.25]), 3, "cpu") == 0.125  # no budget: exactly n
    # a budget adds steps until it is spent (the 5th step ends past 1.0 s), never more than 10
    # (a step past the end of the list would raise StopIteration)
    assert _fastest_step(steps([0.25, 0.25, 0.25, 0.0625, 8]), 3, "cpu", budget_s=1.0) == 0.0625
    assert _fastest_step(steps([2**-6] * 9 + [2**-10, 2**-14]), 3, "cpu", budget_s=60) == 2**-10


def test_calibration_is_the_calibration_steps_flops_over_its_fastest_step(monkeypatch):
    """FLOP/s = the calibration step's FLOPs / the fastest step's seconds, measured once per
    process. The measured rate itself is machine-dependent: benchmarks/estimate_memory.py
    reports it (calibration_gflop_per_s)."""
    import lmforge.eval.estimate as E
    from lmforge.eval.estimate import calibration

    timed = []

    def fastest(step, n, device, budget_s=0.0):
        step()  # a real step of the calibration model runs
        timed.append((n, device, budget_s))
        return 0.25

    monkeypatch.setattr(calibration, "_fastest_step", fastest)  # where calibrate looks it up
    calibrate.cache_clear()  # neither use nor leave a rate measured on the real clock
    try:
        rate = calibrate("fp32")
        assert calibrate("fp32") is rate  # measured once per process
    finally:
        calibrate.cache_clear()
    assert timed == [(3, "cpu", 2.0)]
    b, t = E.CALIBRATION_SHAPE
    flops = estimate(ModelConfig(**E.CALIBRATION), "full", b, t, "fp32")["flops_per_step"]
    assert rate == flops / 0.25
    d = estimate(ModelConfig(**DECODER), "full", 4, 96, "fp32", flops_per_s=rate)
    assert d["seconds_per_step"] == pytest.approx(d["flops_per_step"] / rate)
    assert "time per step" in format_estimate(d)


def test_the_plan_checkpoints_only_when_the_step_would_not_fit(monkeypatch):
    from lmforge.eval.estimate import plan as P

    monkeypatch.setattr(P, "slice_rate", lambda *a, **k: 1e10)
    cfg = from_preset("modernbert-base")
    kw = dict(steps=300, steps_per_epoch=100, num_labels=45, lora_r=16)

    def plan(**more):
        return P.plan_training(cfg, "lora", 8, 128, "fp32", **{**kw, **more})

    roomy, tight = plan(available_mb=64_000), plan(available_mb=1_000)
    assert not roomy["activation_checkpointing"] and tight["activation_checkpointing"]
    assert tight["peak_checkpointed_mb"] < tight["peak_mb"] == roomy["peak_mb"]
    assert 1_000 < roomy["peak_mb"] < 0.85 * 64_000
    # a setting in the config wins over the estimate
    assert plan(available_mb=1_000, checkpointing=False)["activation_checkpointing"] is False
    assert plan(available_mb=64_000, checkpointing=True)["activation_checkpointing"] is True
    # checkpointing costs one more forward per step; epochs and the run scale by their steps
    assert 1.2 < tight["seconds_per_step"] / roomy["seconds_per_step"] < 1.6
    assert roomy["seconds_total"] == pytest.approx(3 * roomy["seconds_per_epoch"])
    # shorter batches (padding to their own longest row) take less time, not less memory
    short = plan(available_mb=64_000, mean_seq=40)
    assert short["seconds_per_step"] < 0.5 * roomy["seconds_per_step"]
    assert short["peak_mb"] == roomy["peak_mb"]
    assert "checkpointing off" in P.format_plan(roomy) and "/epoch" in P.format_plan(roomy)


def test_a_bf16_frozen_base_halves_the_frozen_weights_and_needs_no_autocast_copies():
    cfg = from_preset("qwen2.5-0.5b", pad_token_id=151643)
    kw = dict(num_labels=113, lora_r=16)
    fp32 = estimate(cfg, "lora", 8, 128, "bf16", **kw)
    low = estimate(cfg, "lora", 8, 128, "bf16", frozen_dtype="bf16", **kw)
    saved = fp32["memory_mb"]["weights"] - low["memory_mb"]["weights"]
    assert saved == pytest.approx(fp32["params_matmul"] * 2 / 2**20)
    assert (
        fp32["memory_mb"]["autocast_weight_copies"]
        > 0
        == low["memory_mb"]["autocast_weight_copies"]
    )
    assert low["frozen_dtype"] == "bf16"
    # without bf16 compute, or with nothing frozen, it does not apply
    assert (
        estimate(cfg, "lora", 8, 128, "fp32", frozen_dtype="bf16", **kw)["frozen_dtype"] == "fp32"
    )
    assert (
        estimate(cfg, "full", 8, 128, "bf16", frozen_dtype="bf16", **kw)["frozen_dtype"] == "fp32"
    )
