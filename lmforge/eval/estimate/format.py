"""The estimate as a reader sees it: a table of memory and compute, and whether the step fits a
memory budget."""

from __future__ import annotations

import os


def format_estimate(d: dict, memory_budget_gb: float | None = None) -> str:
    """A readable table of `estimate`'s result, and with a budget, whether the step fits.
    GB here are 2^30 bytes (what a "16 GB" GPU holds)."""
    m = d["memory_mb"]
    gb = 1024  # MiB per GB
    training = d["method"] != "inference"
    share = d["trainable"] / d["params"] if d["params"] else 0.0
    if not training:
        precision = f"{d['weights_dtype']} weights and activations, no gradients"
    elif d["dtype"] == "fp32":
        precision = "fp32 weights, gradients, AdamW states and activations"
    else:
        precision = (
            f"fp32 master weights, gradients and AdamW states; {d['dtype']} autocast "
            "activations (as lmforge's trainer runs it)"
        )
    rows = [
        ("weights", m["weights"]),
        ("gradients", m["gradients"]),
        ("optimizer (AdamW, 2 x fp32)", m["optimizer"]),
    ]
    if m["autocast_weight_copies"]:
        rows.append(("autocast bf16 weight copies", m["autocast_weight_copies"]))
    if m["reference_weights"]:
        rows.append(("reference model (DPO)", m["reference_weights"]))
    rows.append(("activations (peak)", m["activations"]))
    lines = [
        f"{d['model']} ({d['kind']}) | {d['method']} | batch {d['batch']} x seq {d['seq']} | "
        f"{d['dtype']} on {d['device']}",
        f"  precision   {precision}",
        f"  attention   {d['attention']}",
        f"parameters    {d['params'] / 1e6:,.1f}M, trainable {d['trainable'] / 1e6:,.2f}M "
        f"({share:.2%})",
        "memory, MiB (the peak of one step)",
        *(f"  {name:<30}{value:>12,.1f}" for name, value in rows),
        f"  {'total':<30}{m['total']:>12,.1f}   weights + states + max(copies + activations, "
        "gradients)",
        f"  {'with activation checkpointing':<30}{m['total_checkpointed']:>12,.1f}   "
        f"activations {m['activations_checkpointed']:,.1f} (per block: "
        "trainer.activation_checkpointing=true)",
        "compute",
        f"  tokens per step               {d['tokens_per_step']:>12,}",
        f"  FLOPs per step                {d['flops_per_step']:>12.3g}   "
        f"({d['flops_per_token']:.3g} per token)",
    ]
    if "seconds_per_step" in d:
        lines.append(
            f"  time per step                 {d['seconds_per_step']:>12.3g} s   at "
            f"{d['flops_per_s'] / 1e9:.1f} GFLOP/s, measured by a short {d['dtype']} training "
            f"step of a small lmforge Transformer on this {d['device']}"
        )
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if d["device"] == "cpu" and load > cores:  # the calibration shared the cores
            lines.append(f"  (the machine is busy, load {load:.1f} on {cores} cores: pessimistic)")
    if memory_budget_gb is not None:
        need = m["total_checkpointed"] if d["activation_checkpointing"] else m["total"]
        fits = "yes" if need <= memory_budget_gb * gb else "no"
        lines.append(
            f"fits in {memory_budget_gb:g} GB: {fits} (needs {m['total'] / gb:.1f} GB; with "
            f"activation checkpointing {m['total_checkpointed'] / gb:.1f} GB)"
        )
    return "\n".join(lines)
