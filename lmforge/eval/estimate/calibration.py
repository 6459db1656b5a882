"""Calibration: the FLOP/s a small real training step of our Transformer reaches on this
machine, which the estimate's FLOPs are divided by to give a time per step."""

from __future__ import annotations

import functools

from lmforge.errors import ConfigError
from lmforge.eval.estimate.measured import _fastest_step, build_step
from lmforge.eval.estimate.memory import DTYPES, estimate
from lmforge.model.config import ModelConfig

# The calibration model: a 2-layer decoder of width 256 (vocab 4096) on 4 x 128 tokens, small
# enough that the measurement takes a few seconds on 2 CPU cores.
CALIBRATION = dict(
    vocab_size=4096, n_layer=2, n_embd=256, n_head=4, intermediate_size=704, max_seq_len=128
)
CALIBRATION_SHAPE = (4, 128)


@functools.cache
def calibrate(dtype: str = "bf16", device: str = "cpu") -> float:
    """Training FLOP/s that a real full training step of our Transformer reaches here in
    ``dtype``: the fastest of 3-10 steps (about 2 s) after a warm-up, cached for the process.
    Time estimates divide by it. A rough figure: a big model's larger matmuls run closer to
    the hardware's peak, and other processes sharing the cores slow every step down."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    cfg = ModelConfig(**CALIBRATION)
    b, t = CALIBRATION_SHAPE
    _, step, _ = build_step(cfg, "full", b, t, dtype, device=device)  # runs the first step
    seconds = _fastest_step(step, 3, device, budget_s=2.0)
    return estimate(cfg, "full", b, t, dtype, device=device)["flops_per_step"] / seconds


def slice_rate(
    cfg: ModelConfig,
    method: str,
    batch: int,
    seq: int,
    dtype: str,
    device: str = "cpu",
    **shape,
) -> float:
    """Training FLOP/s of a 2-layer slice of ``cfg`` itself at this batch shape: its matmuls are
    the run's own size, so the rate is the one the whole run reaches (a 0.5B model's layers run
    about twice as fast per FLOP as `calibrate`'s small ones on 2 cores). Seconds to measure;
    ``shape``: `build_step`'s lora_r, lora_targets, lora_dropout, num_labels."""
    small = cfg.model_copy(
        update={"n_layer": min(cfg.n_layer, 2), "vocab_size": min(cfg.vocab_size, 4096)}
    )
    _, step, _ = build_step(small, method, batch, seq, dtype, device=device, **shape)
    seconds = _fastest_step(step, 2, device)  # after build_step's own first step
    return (
        estimate(small, method, batch, seq, dtype, device=device, **shape)["flops_per_step"]
        / seconds
    )
