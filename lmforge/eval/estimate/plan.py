"""A training run's plan, printed before its first step: the estimate's peak memory against
what the machine has (which decides ``activation_checkpointing: auto``) and the time per step,
per epoch and in all from the FLOP rate a 2-layer slice of the model reaches here."""

from __future__ import annotations

import torch

from lmforge.eval.estimate.calibration import slice_rate
from lmforge.eval.estimate.memory import estimate
from lmforge.machine import available_memory_mb
from lmforge.model.config import ModelConfig

# Checkpointing turns on when the plain step's estimate would take more than this share of the
# available memory: the estimate is within a few percent (benchmarks/activation_checkpointing.py)
# but the allocator, the data and the evaluation need some room too.
HEADROOM = 0.85
MEASURED_SHAPE = ("lora_r", "lora_targets", "lora_dropout", "num_labels")


def plan_training(
    cfg: ModelConfig,
    method: str,
    batch: int,
    seq: int,
    dtype: str,
    *,
    steps: int,
    steps_per_epoch: int,
    mean_seq: float | None = None,
    checkpointing: bool | str = "auto",
    available_mb: float | None = None,
    device: str = "cpu",
    **shape,
) -> dict:
    """Peak memory at the longest batch (``seq``), time at the mean padded length
    (``mean_seq``: batches pad to their own longest row), and whether to checkpoint.
    ``shape``: `estimate`'s lora_r, lora_targets, lora_dropout, num_labels, grad_accum_steps,
    frozen_dtype."""
    e = estimate(cfg, method, batch, seq, dtype, device=device, **shape)
    peak, peak_ckpt = e["memory_mb"]["total"], e["memory_mb"]["total_checkpointed"]
    if available_mb is not None:
        available = available_mb
    elif device.startswith("cuda"):
        # the GPU's free memory, not the host's
        available = torch.cuda.mem_get_info(torch.device(device))[0] / 2**20
    else:
        available = available_memory_mb()
    if checkpointing != "auto":
        on, reason = bool(checkpointing), "set in the config"
    elif available is None:
        on, reason = False, "the available memory is unknown here"
    elif peak <= HEADROOM * available:
        on, reason = False, f"{peak:,.0f} MB fits in {available:,.0f} MB available"
    else:
        on = True
        reason = f"{peak:,.0f} MB would not fit in {available:,.0f} MB available"
    t = max(1, round(mean_seq or seq))
    measured = {k: v for k, v in shape.items() if k in MEASURED_SHAPE}
    rate = slice_rate(cfg, method, batch, t, dtype, device=device, **measured)
    flops = estimate(cfg, method, batch, t, dtype, device=device, **shape)["flops_per_step"]
    if on:  # checkpointing runs each block's forward once more, in the backward
        labels = {"num_labels": shape["num_labels"]} if shape.get("num_labels") else {}
        flops += estimate(cfg, "inference", batch, t, dtype, device=device, **labels)[
            "flops_per_step"
        ]
    per_step = flops * shape.get("grad_accum_steps", 1) / rate
    return {
        "peak_mb": round(peak),
        "peak_checkpointed_mb": round(peak_ckpt),
        "available_mb": None if available is None else round(available),
        "activation_checkpointing": on,
        "reason": reason,
        "dtype": dtype,
        "flops_per_s": rate,
        "seconds_per_step": per_step,
        "seconds_per_epoch": per_step * steps_per_epoch,
        "seconds_total": per_step * steps,
    }


def format_plan(p: dict) -> str:
    ckpt = "on" if p["activation_checkpointing"] else "off"
    peak = p["peak_checkpointed_mb"] if p["activation_checkpointing"] else p["peak_mb"]
    return (
        f"peak memory ~{peak:,} MB (activation checkpointing {ckpt}: {p['reason']}); "
        f"~{_duration(p['seconds_per_step'])}/step, {_duration(p['seconds_per_epoch'])}/epoch, "
        f"{_duration(p['seconds_total'])} in all at {p['flops_per_s'] / 1e9:,.0f} GFLOP/s "
        f"({p['dtype']}, a 2-layer slice timed here; the progress bar shows the run's own rate)"
    )


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
