"""Training throughput: lmforge's training step against transformers' LlamaForCausalLM.

Same shape on both sides (6 layers, width 384, 6 heads, FFN 1024, vocab 8192, seq 256,
batch 8, untied embeddings), same data, AdamW, clipping at 1.0. lmforge runs as a user gets it
(`precision: auto`, which picks bf16 only where this CPU's bf16 matmuls beat fp32). The peer
runs in every configuration a careful transformers user could pick: eager or torch.compile,
fp32 or bf16 autocast, torch's fused AdamW and the same glibc allocator tuning lmforge uses;
the headline ratio is against the fastest of them. `hf_plain_bf16` / `hf_plain_fp32` are
transformers as most scripts run it (eager, foreach AdamW, default allocator), for reference.

Each contender lives in its own process (an allocator setting or compiled graph of one cannot
help another), warms up (compiles) once, then the timed repeats go round-robin: contender A,
B, C, ..., A, B, C, ... so that drift in the machine's speed falls on every contender alike.
bf16 contenders are skipped, with the reason, on a CPU without bf16 instructions (AVX2:
bf16 is emulated at ~1 GFLOP/s; one step would take minutes).

    python benchmarks/pretrain_throughput.py                 # all contenders, JSON on stdout
    python benchmarks/pretrain_throughput.py --steps 10 --repeats 5 --out bench.json
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/pretrain_throughput.py  # as without AMX
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SHAPE = dict(
    n_layer=6, n_embd=384, n_head=6, intermediate_size=1024, vocab_size=8192, seq_len=256, batch=8
)

_HF_BEST = "fused AdamW, lmforge's glibc mallopt thresholds"
CONTENDERS = {
    "lmforge": "lmforge Trainer.train_step as configured by default: precision=auto, "
    "torch.compile of forward + fp32 cross-entropy, fused AdamW, CPU attention as two bmm + "
    "softmax, glibc mallopt thresholds (train/device.py)",
    "hf_compiled_fp32": f"transformers LlamaForCausalLM (sdpa), torch.compile, fp32, {_HF_BEST}",
    "hf_compiled_bf16": f"as hf_compiled_fp32 with bf16 autocast (fp32 weights), {_HF_BEST}",
    "hf_eager_fp32": f"transformers LlamaForCausalLM (sdpa), eager, fp32, {_HF_BEST}",
    "hf_eager_bf16": f"as hf_eager_fp32 with bf16 autocast (fp32 weights), {_HF_BEST}",
    "hf_plain_fp32": "transformers as most scripts run it: eager, fp32, torch.optim.AdamW "
    "defaults (foreach), default allocator",
    "hf_plain_bf16": "as hf_plain_fp32 with bf16 autocast",
}
# Reference points, not peers: the headline is against the best of the others.
NOT_PEERS = {"lmforge", "hf_plain_fp32", "hf_plain_bf16"}


def lmforge_config():
    from lmforge.model.config import ModelConfig

    return ModelConfig(
        n_layer=SHAPE["n_layer"],
        n_embd=SHAPE["n_embd"],
        n_head=SHAPE["n_head"],
        intermediate_size=SHAPE["intermediate_size"],
        vocab_size=SHAPE["vocab_size"],
        max_seq_len=SHAPE["seq_len"],
        tie_embeddings=False,
    )


def hf_step_fn(name: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=SHAPE["vocab_size"],
        hidden_size=SHAPE["n_embd"],
        intermediate_size=SHAPE["intermediate_size"],
        num_hidden_layers=SHAPE["n_layer"],
        num_attention_heads=SHAPE["n_head"],
        num_key_value_heads=SHAPE["n_head"],
        max_position_embeddings=SHAPE["seq_len"],
        tie_word_embeddings=False,
    )
    plain = "plain" in name
    if not plain:
        from lmforge.train.device import tune_cpu_allocator

        tune_cpu_allocator()
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=not plain)
    fwd = torch.compile(model) if "compiled" in name else model
    bf16 = name.endswith("bf16")
    x = torch.randint(
        0,
        SHAPE["vocab_size"],
        (SHAPE["batch"], SHAPE["seq_len"]),
        generator=torch.Generator().manual_seed(0),
    )

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    params = sum(p.numel() for p in model.parameters())
    return step, params, "bf16" if bf16 else "fp32"


def lmforge_step_fn():
    import tempfile

    import torch

    from lmforge.model.transformer import LanguageModel
    from lmforge.train.objectives import clm_loss
    from lmforge.train.trainer import Trainer, TrainerConfig

    mcfg = lmforge_config()
    x = torch.randint(
        0,
        SHAPE["vocab_size"],
        (SHAPE["batch"], SHAPE["seq_len"]),
        generator=torch.Generator().manual_seed(0),
    )

    class SameBatch:  # the data path is not what is measured here
        def next_batch(self):
            return {"input_ids": x, "targets": x}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    tcfg = TrainerConfig(
        micro_batch_size=SHAPE["batch"],
        lr=1e-4,
        warmup_steps=0,
        schedule="constant",
        precision="auto",
        compile=True,
        device="cpu",
        progress=False,
        spike={"enabled": False},
    )
    trainer = Trainer(
        tcfg, LanguageModel(mcfg), clm_loss, SameBatch(), tempfile.mkdtemp(prefix="lmf-bench-")
    )
    params = sum(p.numel() for p in trainer.model.parameters())
    return trainer.train_step, params, trainer.precision


def child(name: str, warmup: int, steps: int) -> None:
    """A contender's process: build, warm up, then time `steps` steps per line read on stdin."""
    import torch

    step, params, precision = lmforge_step_fn() if name == "lmforge" else hf_step_fn(name)
    t0 = time.perf_counter()
    for _ in range(warmup):  # includes torch.compile's first-call compilation
        step()
    ready = {
        "params": params,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "warmup_seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(ready), flush=True)
    tokens = SHAPE["batch"] * SHAPE["seq_len"] * steps
    for _ in sys.stdin:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        print(json.dumps({"tokens_per_second": tokens / (time.perf_counter() - t)}), flush=True)


def skip_reason(name: str) -> str | None:
    from lmforge.train.device import cpu_bf16_instructions

    if name.endswith("bf16") and not cpu_bf16_instructions():
        return "this CPU has no bf16 instructions: bf16 is emulated (about 1 GFLOP/s)"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    ap.add_argument(
        "--warmup", type=int, default=4, help="untimed steps first (compilation happens here)"
    )
    ap.add_argument("--only", nargs="*", choices=list(CONTENDERS), help="run only these contenders")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        child(args.child, args.warmup, args.steps)
        return

    import torch

    from lmforge.machine import cpu_flags
    from lmforge.train.device import cpu_bf16_instructions, cpu_precision, matmul_peak_flops

    names = args.only or list(CONTENDERS)
    results: dict[str, dict] = {}
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in names:  # one at a time: compilation must not share the cores either
            if reason := skip_reason(name):
                results[name] = {"skipped": reason, "uses": CONTENDERS[name]}
                continue
            print(f"[bench] {name}: warming up", file=sys.stderr, flush=True)
            cmd = [
                sys.executable,
                __file__,
                "--child",
                name,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            if not line:
                sys.exit(f"[bench] {name} failed to start (exit {p.wait()})")
            procs[name] = p
            results[name] = {**json.loads(line), "each_repeat": [], "uses": CONTENDERS[name]}
        for r in range(args.repeats):  # round-robin: every contender once per round
            for name, p in procs.items():
                p.stdin.write("go\n")
                p.stdin.flush()
                line = p.stdout.readline()
                if not line:
                    sys.exit(f"[bench] {name} died in repeat {r + 1} (exit {p.wait()})")
                rate = json.loads(line)["tokens_per_second"]
                results[name]["each_repeat"].append(round(rate))
                print(
                    f"[bench] round {r + 1}/{args.repeats} {name}: {rate:,.0f} tok/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()

    flops_per_token = lmforge_config().flops_per_token(SHAPE["seq_len"])
    peaks = {"fp32": matmul_peak_flops("cpu", "float32")}
    if cpu_bf16_instructions():
        peaks["bf16"] = matmul_peak_flops("cpu", "bfloat16")
    for r in results.values():
        if "each_repeat" in r:
            r["tokens_per_second"] = round(statistics.median(r["each_repeat"]))
            r["mfu"] = round(r["tokens_per_second"] * flops_per_token / peaks[r["precision"]], 4)
    timed = {k: v for k, v in results.items() if "tokens_per_second" in v}
    report = {
        "benchmark": "pretrain_throughput",
        "shape": SHAPE,
        "flops_per_token": flops_per_token,
        "matmul_peak_tflops": {k: round(v / 1e12, 3) for k, v in peaks.items()},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_flags": sorted(
                f for f in cpu_flags() if "avx512" in f or "amx" in f or f == "avx2"
            ),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "lmforge_precision_auto": cpu_precision().reason,
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "protocol": f"{args.warmup} warm-up steps, then {args.repeats} round-robin repeats of "
        f"{args.steps} steps; medians",
        "results": results,
    }
    peers = {k: v for k, v in timed.items() if k not in NOT_PEERS}
    if "lmforge" in timed and peers:
        best = max(peers, key=lambda k: peers[k]["tokens_per_second"])
        lmf = timed["lmforge"]["tokens_per_second"]
        report["best_peer"] = best
        report["headline"] = {f"lmforge/{best}": round(lmf / peers[best]["tokens_per_second"], 2)}
        report["ratios"] = {
            f"lmforge/{k}": round(lmf / v["tokens_per_second"], 2)
            for k, v in timed.items()
            if k != "lmforge"
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
