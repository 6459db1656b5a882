"""Activation checkpointing on the course's real shapes: peak memory saved, time it costs.

One real training step of our own modules (`lmforge.eval.estimate.build_step`, which turns on
checkpointing the way the Trainer does: `set_activation_checkpointing`), with random weights of
the real configs (Qwen2.5-0.5B: 24 layers, d 896, vocab 151,936; ModernBERT-base: 22 layers,
d 768), a 45-label head, a batch of 8 x 128 tokens, at the precision the trainer picks on this
CPU. For each run, with and without checkpointing:

- peak memory: the resident tensors plus the profiler's peak inside the step (as
  `lmforge estimate --measure` reports it), beside the estimate's arithmetic for both;
- time: the fastest of ``--timed-steps`` steps, the two settings interleaved.

    python benchmarks/activation_checkpointing.py > benchmarks/results-activation_checkpointing.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from lmforge.eval.estimate import build_step, estimate, measure
from lmforge.eval.estimate.measured import _fastest_step
from lmforge.model.config import from_preset
from lmforge.train.device import cpu_precision

RUNS = [("qwen2.5-0.5b", "lora"), ("modernbert-base", "full"), ("modernbert-base", "lora")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--labels", type=int, default=45)
    ap.add_argument("--timed-steps", type=int, default=2)
    args = ap.parse_args()
    dtype = cpu_precision().precision
    rows = []
    for preset, method in RUNS:
        cfg = from_preset(preset)
        shape = dict(num_labels=args.labels)
        row = {"model": preset, "method": method, "dtype": dtype}
        for on in (False, True):
            m = measure(
                cfg, method, args.batch, args.seq, dtype, activation_checkpointing=on, **shape
            )
            e = estimate(cfg, method, args.batch, args.seq, dtype, **shape)["memory_mb"]
            key = "checkpointed" if on else "plain"
            row[key] = {
                "measured_peak_mb": round(m["peak_mb"]),
                "estimated_peak_mb": round(e["total_checkpointed" if on else "total"]),
            }
        # time: the two settings' steps interleaved, the fastest of each
        steps = {
            on: build_step(
                cfg, method, args.batch, args.seq, dtype, activation_checkpointing=on, **shape
            )[1]
            for on in (False, True)
        }
        best = {False: float("inf"), True: float("inf")}
        for _ in range(args.timed_steps):
            for on in (False, True):
                best[on] = min(best[on], _fastest_step(steps[on], 1, "cpu"))
        row["plain"]["seconds_per_step"] = round(best[False], 3)
        row["checkpointed"]["seconds_per_step"] = round(best[True], 3)
        row["memory_saved"] = round(
            1 - row["checkpointed"]["measured_peak_mb"] / row["plain"]["measured_peak_mb"], 3
        )
        row["time_cost"] = round(best[True] / best[False] - 1, 3)
        rows.append(row)
        print(json.dumps(row), flush=True, file=sys.stderr)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "torch": torch.__version__,
    }
    print(
        json.dumps(
            {"machine": machine, "batch": args.batch, "seq": args.seq, "runs": rows}, indent=2
        )
    )


if __name__ == "__main__":
    main()
