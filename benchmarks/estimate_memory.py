"""`lmforge estimate` against real steps: estimated / measured peak memory and time per step.

For small models of each family shape (a GQA decoder, a GPT-2-style decoder, a ModernBERT-style
encoder, a long-sequence decoder on the fused attention path) and each method, one real step of
our own modules (`lmforge.eval.estimate.build_step`: the stages' models, LoRA injection, loss
functions, autocast, AdamW) is measured:

- peak memory: the tensors resident before the step plus the profiler's peak of live tensor
  bytes allocated inside it (torch.profiler, profile_memory=True);
- time: the fastest of a few timed steps, against FLOPs / `calibrate(dtype)` (the FLOP/s one
  small full training step reaches on this machine).

The target (issue: "estimates before spending"): memory within 20% of measured. The time is a
rough guide: it assumes every step runs at the calibration model's FLOP/s.

    python benchmarks/estimate_memory.py                  # JSON on stdout, ~1-2 min on 2 cores
    python benchmarks/estimate_memory.py --timed-steps 0  # memory only, quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from lmforge.eval.estimate import calibrate, estimate, measure
from lmforge.model.config import ModelConfig, from_preset

ENCODER = dict(
    causal=False,
    norm="layernorm",
    mlp="geglu",
    activation="gelu",
    embed_norm=True,
    first_attn_norm=False,
    tie_embeddings=True,
    global_every=3,
    local_window=64,
    rope_theta_local=10000.0,
)
GPT2 = dict(
    norm="layernorm",
    norm_bias=True,
    mlp="gelu",
    activation="gelu_tanh",
    pos_embedding="learned",
    attn_qkv_bias=True,
    attn_out_bias=True,
    mlp_bias=True,
    tie_embeddings=True,
)

CONFIGS = {
    # the demo's decoder shape at depth 4 (width 256, 4 heads, SwiGLU 704), 2 KV heads
    "decoder-d4-gqa": from_preset("lmforge-d4", vocab_size=8192, n_kv_head=2),
    "gpt2-style-d3": from_preset("lmforge-d3", vocab_size=8192, **GPT2),
    "encoder-d4": from_preset("lmforge-d4", vocab_size=8192, **ENCODER),
    # past 512 keys our CPU attention hands over to SDPA's fused kernel (no t x t matrix)
    "decoder-d4-long": from_preset(
        "lmforge-d4", vocab_size=8192, n_layer=2, n_kv_head=1, max_seq_len=1024
    ),
}

# (config, method, dtype, batch, seq, options)
RUNS = [
    ("decoder-d4-gqa", "full", "fp32", 8, 128, {}),
    ("decoder-d4-gqa", "full", "bf16", 8, 128, {}),
    ("decoder-d4-gqa", "lora", "bf16", 8, 128, {"lora_dropout": 0.05}),
    ("decoder-d4-gqa", "dpo", "bf16", 4, 128, {}),
    ("decoder-d4-gqa", "inference", "bf16", 8, 128, {}),
    ("decoder-d4-gqa", "full", "bf16", 8, 128, {"activation_checkpointing": True}),
    ("gpt2-style-d3", "full", "fp32", 8, 128, {}),
    ("gpt2-style-d3", "lora", "fp32", 8, 128, {"num_labels": 5}),
    ("encoder-d4", "full", "bf16", 8, 128, {"num_labels": 5}),
    ("encoder-d4", "probe", "fp32", 8, 128, {"num_labels": 5}),
    ("encoder-d4", "lora", "bf16", 8, 128, {}),
    ("decoder-d4-long", "full", "bf16", 2, 640, {}),
]


def run(name: str, cfg: ModelConfig, method, dtype, batch, seq, options, timed_steps) -> dict:
    t0 = time.perf_counter()
    measured = measure(cfg, method, batch, seq, dtype, timed_steps=timed_steps, **options)
    flops_per_s = calibrate(dtype) if timed_steps else None
    est = estimate(cfg, method, batch, seq, dtype, flops_per_s=flops_per_s, **options)
    checkpointing = options.get("activation_checkpointing", False)
    est_mb = est["memory_mb"]["total_checkpointed" if checkpointing else "total"]
    counts = (est["params"], est["trainable"])
    row = {
        "config": name,
        "method": method,
        "dtype": dtype,
        "batch": batch,
        "seq": seq,
        "options": options,
        "params": est["params"],
        "trainable": est["trainable"],
        "counts_match": counts == (measured["params"], measured["trainable"]),
        "estimated_peak_mb": round(est_mb, 1),
        "measured_peak_mb": round(measured["peak_mb"], 1),
        "memory_ratio": round(est_mb / measured["peak_mb"], 3),
    }
    if timed_steps:
        row.update(
            estimated_s=round(est["seconds_per_step"], 3),
            measured_s=round(measured["seconds_per_step"], 3),
            time_ratio=round(est["seconds_per_step"] / measured["seconds_per_step"], 2),
        )
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timed-steps", type=int, default=3, help="steps timed per run (0: none)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = [run(name, CONFIGS[name], *rest, timed_steps=args.timed_steps) for name, *rest in RUNS]
    ratios = [r["memory_ratio"] for r in rows]
    gflops = None
    if args.timed_steps:
        gflops = {dt: round(calibrate(dt) / 1e9, 1) for dt in ("fp32", "bf16")}
    result = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": args.threads,
        "load_average": os.getloadavg()[0],
        "calibration_gflop_per_s": gflops,
        "summary": {
            "memory_ratio_min": min(ratios),
            "memory_ratio_max": max(ratios),
            "within_20_percent": sum(0.8 <= r <= 1.2 for r in ratios),
            "runs": len(rows),
            "counts_match": all(r["counts_match"] for r in rows),
            **(
                {"time_ratio_median": statistics.median(r["time_ratio"] for r in rows)}
                if args.timed_steps
                else {}
            ),
        },
        "runs": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
