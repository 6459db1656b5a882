"""Training throughput: lmforge's training step against transformers' LlamaForCausalLM.

Same shape on both sides (6 layers, width 384, 6 heads, FFN 1024, vocab 8192, seq 256,
batch 8, untied embeddings), same data, AdamW, clipping at 1.0, bf16. Each contender runs in
its own subprocess, so an allocator setting or a compiled graph of one cannot help another.

    python benchmarks/pretrain_throughput.py                 # all contenders, JSON on stdout
    python benchmarks/pretrain_throughput.py --steps 20 --repeats 5 --out bench.json

The ratio that matters is lmforge against `hf_eager_bf16`: transformers as its users run it
(eager, bf16 autocast, torch.optim.AdamW). `hf_compiled_bf16` and `hf_eager_bf16_tuned_malloc`
show how much of the gap each of lmforge's choices explains; `hf_eager_fp32` is there for
machines without fast bf16. MFU is against the bf16 matmul rate this script measures.
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

CONTENDERS = {
    "hf_eager_bf16": "transformers LlamaForCausalLM (attn_implementation=sdpa), eager, "
    "bf16 autocast, torch.optim.AdamW defaults (foreach), fp32 weights",
    "hf_compiled_bf16": "as hf_eager_bf16, model wrapped in torch.compile (default mode)",
    "hf_eager_bf16_tuned_malloc": "as hf_eager_bf16, with lmforge's glibc mallopt thresholds",
    "hf_eager_fp32": "as hf_eager_bf16, no autocast (fp32 throughout)",
    "lmforge": "lmforge Trainer.train_step: torch.compile of forward + fp32 cross-entropy, "
    "bf16 autocast, fp32 weights, fused AdamW, CPU attention as two bmm + softmax, "
    "glibc mallopt thresholds (train/device.py)",
}


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
    if name.endswith("tuned_malloc"):
        from lmforge.train.device import tune_cpu_allocator

        tune_cpu_allocator()
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    fwd = torch.compile(model) if "compiled" in name else model
    bf16 = "fp32" not in name
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
    return step, params


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
        precision="bf16",
        compile=True,
        device="cpu",
        progress=False,
        spike={"enabled": False},
    )
    trainer = Trainer(
        tcfg, LanguageModel(mcfg), clm_loss, SameBatch(), tempfile.mkdtemp(prefix="lmf-bench-")
    )
    params = sum(p.numel() for p in trainer.model.parameters())
    return trainer.train_step, params


def run_one(name: str, warmup: int, steps: int, repeats: int) -> dict:
    """Runs inside the subprocess: time `steps` steps `repeats` times after `warmup` steps."""
    import torch

    step, params = lmforge_step_fn() if name == "lmforge" else hf_step_fn(name)
    t0 = time.perf_counter()
    for _ in range(warmup):  # includes torch.compile's first-call compilation
        step()
    warmup_s = time.perf_counter() - t0
    tokens = SHAPE["batch"] * SHAPE["seq_len"] * steps
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(tokens / (time.perf_counter() - t))
    return {
        "tokens_per_second": statistics.median(rates),
        "tokens_per_second_each_repeat": [round(r) for r in rates],
        "params": params,
        "warmup_seconds": round(warmup_s, 1),
        "threads": torch.get_num_threads(),
        "uses": CONTENDERS[name],
    }


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
        print(json.dumps(run_one(args.child, args.warmup, args.steps, args.repeats)))
        return

    import torch

    from lmforge.train.device import matmul_peak_flops

    results = {}
    for name in args.only or CONTENDERS:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--steps",
            str(args.steps),
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode != 0:
            sys.exit(f"[bench] {name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"[bench] {name}: {results[name]['tokens_per_second']:.0f} tok/s",
            file=sys.stderr,
            flush=True,
        )

    mcfg = lmforge_config()
    flops_per_token = mcfg.flops_per_token(SHAPE["seq_len"])
    peak = matmul_peak_flops("cpu", "bfloat16")
    for r in results.values():
        r["mfu"] = round(r["tokens_per_second"] * flops_per_token / peak, 4)
        r["tokens_per_second"] = round(r["tokens_per_second"])
    report = {
        "benchmark": "pretrain_throughput",
        "shape": SHAPE,
        "flops_per_token": flops_per_token,
        "matmul_peak_bf16_tflops": round(peak / 1e12, 3),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "results": results,
    }
    if "lmforge" in results:
        lmf = results["lmforge"]["tokens_per_second"]
        report["ratios"] = {
            f"lmforge/{k}": round(lmf / v["tokens_per_second"], 2)
            for k, v in results.items()
            if k != "lmforge"
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
