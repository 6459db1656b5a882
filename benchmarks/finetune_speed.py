"""Classifier fine-tuning and inference, lmforge against transformers (+ peft), side by side on
the course's real shapes, in one run with interleaved repeats.

Shapes (random weights; no hub): Qwen2.5-0.5B (24 layers, d 896, GQA 14/2, vocab 151,936, tied
embeddings) as Qwen2ForSequenceClassification, and ModernBERT-base (ModernBertConfig's defaults:
22 layers, d 768, a global layer every 3rd, local window 128, vocab 50,368; mean pooling, as the
published checkpoint) as ModernBertForSequenceClassification, each with a ``--labels`` head. Each
is built once by transformers (``save_pretrained``, fp32, with a word-level tokenizer.json of the
full vocabulary) into a temporary directory that both sides then load. The head's initial
weights are the checkpoint's, so both sides start from the same head.

Training runs (``--batch`` 8 x ``--seq`` 128, ``--steps`` 20 fixed batches, the same for every
contender): qwen-lora (r 16, alpha 32 on q/k/v/o; the `score` head trained), modernbert-full,
modernbert-lora (r 16, alpha 32 on Wqkv / Wo / Wi; lmforge splits Wqkv into q, k, v adapters
and Wi into gate, up: a different parametrization, so that run's loss curves are not expected
to agree, and the trainable counts differ; both are reported). Token ids are random text ids in
each family's template (ModernBERT: [CLS] ... [SEP], right padding; Qwen: left padding as the
course's recipe); about half the rows are shorter than ``--seq`` and padded, so padding, last-
token and mean pooling all matter. The settings, on both sides: lr 2e-4 constant, no warmup,
AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on matrices only (not norms, embeddings,
biases: lmforge's rule, given to the peer too), gradient clipping at 1.0, every dropout 0 (LoRA
dropout too) so the loss curves can be compared for equality. LoRA's A matrices are drawn by
this script from the kaiming-uniform distribution both libraries use, seeded by module name,
so both sides start from the same adapters; B is zero on both.

- lmforge: the classifier built as `lmforge classify train` builds it (stages/classify.py's
  `build_classifier` on the checkpoint directory, its `frozen_dtype_for` choice), and a real
  `lmforge.train.trainer.Trainer` whose `train_step()` is called ``--steps`` times: its
  optimizer (build_optimizer: fused AdamW), its precision (cpu_precision: fp32 on an AVX2 CPU),
  autocast, clipping and allocator tuning. `fit()`'s extras (evaluation, checkpoints,
  metrics.jsonl, progress bar) are left out.
- peer: AutoModelForSequenceClassification from the same directory, attn_implementation
  "sdpa", fp32, (+ peft get_peft_model, task_type SEQ_CLS, modules_to_save = the head: `score`,
  or ModernBERT's `head` and `classifier` as lmforge trains them), torch.optim.AdamW(fused=True),
  the model's own loss (labels=...), clip_grad_norm_, and the same glibc malloc tuning lmforge's
  trainer applies (``--peer-allocator default`` turns it off).
- lmforge-compiled and peer-compiled (``--peer-compile``, on by default): lmforge with
  `trainer.compile` (inference: torch.compile of the model), the peer with torch.compile(model); the
  first steps (compilation) are among the warm-up steps left out of the timing.

Each contender runs in a fresh subprocess, so its peak RSS is its own. Per run and contender:
seconds per step (the median over the steps after the first ``--warmup-steps`` 2), tokens per
second (padded tokens, batch x seq), the loss curve and its largest difference from lmforge's,
and memory: the process's peak RSS, its RSS after imports (the baseline: interpreter and
libraries), and the peak RSS during the steps (the high-water mark reset after loading, via
/proc/self/clear_refs). lmforge's estimate (`lmforge.eval.estimate.estimate`, the arithmetic of
`lmforge estimate`) counts live tensors only (weights + optimizer states + max(activations,
gradients)), no process baseline and no allocator slack: it is compared with the steps' peak
minus the baseline.

Inference (``--infer-batch`` 32 x ``--seq`` 128, ``--infer-batches`` timed batches after one
untimed): examples/s of lmforge's classifier (`lmforge.artifact.load` of the directory, eval
mode, inference_mode, at cpu_precision's dtype) against the peer in fp32, bf16 and compiled
fp32. A contender whose warm-up batch alone took over ``--infer-budget`` seconds (bf16 without
bf16 units) is timed by fewer batches, at least that one (the JSON says how many).

int8: `lmforge quantize --method int8` of the same directory (stages/quantize.py) against its
fp32 source, both loaded with `lmforge.artifact.load`: the p50 latency of a batch of 1 x seq
(a full row, ``--latency-repeats`` calls) and of infer-batch x seq (``--infer-batches`` calls),
the two models' calls alternating, with the logits' agreement.

Rounds (``--rounds`` 2): each round runs every run's contenders in turn (the order rotated each
round), then the inference and int8 measurements, so drift on a shared machine hits all alike;
the numbers reported are medians across rounds. Headline ratios: lmforge's fastest contender against the fastest peer.

    python benchmarks/finetune_speed.py                                   # full size, ~100 min
    python benchmarks/finetune_speed.py --rounds 1 --no-peer-bf16 --infer-batches 3 \\
        --infer-budget 60 --latency-repeats 7                             # the JSON here, 49 min
    python benchmarks/finetune_speed.py --layers 4 --steps 4 --rounds 1 --out /tmp/smoke.json

The table goes to stderr; the JSON to ``--out`` (default benchmarks/results-finetune_speed.json;
``--out -`` for stdout).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

RUNS = {
    "qwen-lora": {"shape": "qwen", "method": "lora"},
    "modernbert-full": {"shape": "modernbert", "method": "full"},
    "modernbert-lora": {"shape": "modernbert", "method": "lora"},
}
SHAPES = {
    "qwen": {
        "name": "Qwen2.5-0.5B",
        "preset": "qwen2.5-0.5b",
        "layers": 24,
        "vocab": 151936,
        "padding_side": "left",  # configs/course/qwen2.5-0.5b-lora.yaml
        "pad": 151643,  # <|endoftext|>, the course's pad token
        "text_ids": 151643,  # ids below this are text tokens
        "cls": None,
        "sep": None,
        "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "peft_modules_to_save": ["score"],
    },
    "modernbert": {
        "name": "ModernBERT-base",
        "preset": "modernbert-base",
        "layers": 22,
        "vocab": 50368,
        "padding_side": "right",
        "pad": 50283,
        "text_ids": 50280,
        "cls": 50281,
        "sep": 50282,
        "lora_targets": ["Wqkv", "Wo", "Wi"],  # configs/course/modernbert-base-lora.yaml
        # lmforge trains ModernBERT's whole head (dense + norm + classifier) with LoRA; the peer
        # is given the same, so the runs differ only where the adapters do.
        "peft_modules_to_save": ["head", "classifier"],
    },
}
# With fewer layers transformers 5's config.json (layer_types, no global_attn_every_n_layers)
# holds a single global layer, from which lmforge cannot read the period.
MODERNBERT_MIN_LAYERS = 4
GOALS = {
    "qwen-lora": 2.0,
    "modernbert-full": 1.5,
    "modernbert-lora": 2.0,
    "inference": 1.5,
    "int8": 1.3,
    "rss_within": 0.2,
}
LR, BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = 2e-4, (0.9, 0.999), 1e-8, 0.01, 1.0
LORA_R, LORA_ALPHA = 16, 32
SEED = 1234


# --------------------------------------------------------------------------------------------
# Helpers every worker shares (no lmforge import: the peer's process loads only transformers)
# --------------------------------------------------------------------------------------------


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _process_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _tune_glibc_malloc() -> bool:
    """The two mallopt calls of lmforge.train.device.tune_cpu_allocator (copied, so the peer's
    process imports no lmforge): freed memory stays in the process instead of being unmapped."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(-3, 1 << 30) == 1  # M_MMAP_THRESHOLD
        return ok and libc.mallopt(-1, (1 << 31) - 1) == 1  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def _lora_key(name: str) -> str | None:
    """'<layer>.<parent>.<linear>' of a LoRA A weight, the same for lmforge's and peft's names:
    model.layers.3.self_attn.q_proj.lora_A.default.weight and
    base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight -> 3.self_attn.q_proj
    """
    if ".lora_A." not in name or ".layers." not in name:
        return None
    path = name.split(".lora_A.")[0].split(".layers.", 1)[1].split(".")
    return ".".join([path[0], *path[-2:]])


def _init_lora_a(model) -> int:
    """Draw every adapter's A from kaiming-uniform (a = sqrt(5), what lmforge and peft both
    use), seeded by its module key, so the two sides start from the same adapters."""
    import torch

    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            key = _lora_key(name)
            if key is None:
                continue
            g = torch.Generator().manual_seed(SEED + zlib.crc32(key.encode()))
            torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=g)
            n += 1
    return n


def _no_decay(name: str, p) -> bool:
    """lmforge.train.optim.no_decay's rule, for the peer's parameter names."""
    return p.ndim < 2 or "norm" in name or "embed" in name or name.endswith(".bias")


def _load_batches(path: str, key: str) -> list[dict]:
    import torch

    data = torch.load(path)[key]
    return [{k: v[i] for k, v in data.items()} for i in range(len(data["input_ids"]))]


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------------------------
# Workers: each runs in its own process, prints one JSON line
# --------------------------------------------------------------------------------------------


def worker_build(spec: dict) -> dict:
    """The random-weight transformers checkpoint and a word-level tokenizer of its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import (
        ModernBertConfig,
        ModernBertForSequenceClassification,
        Qwen2Config,
        Qwen2ForSequenceClassification,
    )

    out, shape = Path(spec["dir"]), SHAPES[spec["shape"]]
    torch.manual_seed(SEED)
    labels = {f"LABEL_{i}": i for i in range(spec["labels"])}
    if spec["shape"] == "qwen":
        config = Qwen2Config(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=spec["layers"],
            num_attention_heads=14,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            pad_token_id=151643,
            bos_token_id=151643,
            eos_token_id=151643,
            num_labels=spec["labels"],
            label2id=labels,
            id2label={i: n for n, i in labels.items()},
        )
        model = Qwen2ForSequenceClassification(config)
        specials = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}
        roles = {"pad_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    else:
        config = ModernBertConfig(  # the defaults are ModernBERT-base's shape
            num_hidden_layers=spec["layers"],
            classifier_pooling="mean",  # as answerdotai/ModernBERT-base's config.json
            num_labels=spec["labels"],
            label2id=labels,
            id2label={i: n for n, i in labels.items()},
        )
        model = ModernBertForSequenceClassification(config)
        specials = {50280: "[UNK]", 50281: "[CLS]", 50282: "[SEP]", 50283: "[PAD]", 50284: "[MASK]"}
        roles = {
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "mask_token": "[MASK]",
        }
    model.save_pretrained(out)  # fp32 safetensors
    vocab = {specials.get(i, f"t{i}"): i for i in range(shape["vocab"])}
    unk = "[UNK]" if "[UNK]" in vocab else "t0"
    Tokenizer(models.WordLevel(vocab, unk_token=unk)).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(roles))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "mb": sum(f.stat().st_size for f in out.iterdir()) / 2**20,
    }


def worker_quantize(spec: dict) -> dict:
    from lmforge.stages.quantize import quantize

    t0 = time.perf_counter()
    summary = quantize(spec["dir"], spec["out"], "int8")
    return {
        "seconds": time.perf_counter() - t0,
        "checkpoint_mb": summary["checkpoint_mb"],
        "source_checkpoint_mb": summary["source_checkpoint_mb"],
    }


class _FixedBatches:
    """The Trainer's loader contract over a fixed list of batches, in order."""

    def __init__(self, batches: list[dict]):
        self.batches, self.pos = batches, 0

    def next_batch(self) -> dict:
        batch = dict(self.batches[self.pos % len(self.batches)])
        self.pos += 1
        return batch

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def _lmforge_trainer(spec: dict):
    import torch

    from lmforge.data.tasks import Task
    from lmforge.model.lora import LoraConfig, hold_frozen_weights
    from lmforge.model.transformer import count_parameters
    from lmforge.stages.classify import ClassifyConfig, build_classifier, frozen_dtype_for
    from lmforge.train import distributed as dp
    from lmforge.train.device import choose_precision
    from lmforge.train.objectives import classification_loss_fn
    from lmforge.train.trainer import Trainer, TrainerConfig

    baseline = _rss_mb()
    t0 = time.perf_counter()
    shape = SHAPES[spec["shape"]]
    trainer_cfg = TrainerConfig(
        max_steps=spec["steps"],
        micro_batch_size=spec["batch"],
        lr=spec["lr"],
        warmup_steps=0,
        schedule="constant",
        weight_decay=WEIGHT_DECAY,
        betas=BETAS,
        eps=EPS,
        grad_clip=GRAD_CLIP,
        precision="auto",
        compile=bool(spec["compile"]),  # trainer.compile: the model's forward and loss
        activation_checkpointing=False,  # what classify's "auto" picks when the step fits
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        resume="never",
    )
    cfg = ClassifyConfig(
        init=spec["dir"],
        method=spec["method"],
        lora=LoraConfig(
            r=LORA_R, alpha=LORA_ALPHA, dropout=0.0, target_modules=shape["lora_targets"]
        ),
        padding_side=shape["padding_side"],
        batch_size=spec["batch"],
        trainer=trainer_cfg,
    )
    task = Task(
        train=[], val=[], test=[], label_names=[f"LABEL_{i}" for i in range(spec["labels"])]
    )
    model, _, _ = build_classifier(cfg, task)
    adapters = _init_lora_a(model) if spec["method"] == "lora" else 0
    # as stages/classify.py's train(): the trainer config, the precision, the frozen dtype
    tcfg = cfg.trainer.model_copy(update={"micro_batch_size": cfg.batch_size})
    par = dp.plan_for(tcfg)
    precision = choose_precision(tcfg.precision, dp.device_for(tcfg.device))
    frozen = frozen_dtype_for(cfg, precision.precision, par)
    if frozen == "bf16":
        hold_frozen_weights(model, torch.bfloat16)
    trainer = Trainer(
        tcfg,
        model,
        classification_loss_fn(None, 0.0),
        _FixedBatches(_load_batches(spec["batches"], "train")),
        Path(spec["scratch"]),
    )
    counts = count_parameters(model)

    def step(_batch) -> float:
        info = trainer.train_step()
        if info["spike"]:
            raise RuntimeError(f"the trainer took step {trainer.step} for a loss spike")
        return info["loss"]

    info = {
        "baseline_rss_mb": baseline,
        "load_s": time.perf_counter() - t0,
        "params_total": counts["total"],
        "params_trainable": counts["trainable"],
        "lora_adapters": adapters,
        "precision": precision.precision,
        "precision_reason": precision.reason,
        "frozen_dtype": frozen,
        "optimizer": f"{type(trainer.optimizer).__name__} fused={_fused(trainer.optimizer)}",
    }
    return step, info


def _fused(opt) -> bool | None:
    return opt.defaults.get("fused") if hasattr(opt, "defaults") else None


def _peer_trainer(spec: dict):
    import torch
    from transformers import AutoModelForSequenceClassification

    if spec["method"] == "lora":
        from peft import LoraConfig, TaskType, get_peft_model
    baseline = _rss_mb()
    t0 = time.perf_counter()
    shape = SHAPES[spec["shape"]]
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["dir"], attn_implementation="sdpa", dtype=torch.float32
    )
    model.config.use_cache = False
    adapters = 0
    if spec["method"] == "lora":
        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=LORA_R,
                lora_alpha=LORA_ALPHA,
                lora_dropout=0.0,
                target_modules=shape["lora_targets"],
                modules_to_save=shape["peft_modules_to_save"],
            ),
        )
        adapters = _init_lora_a(model)
    tuned = _tune_glibc_malloc() if spec["peer_allocator"] == "tuned" else False
    groups: dict[bool, list] = {False: [], True: []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[_no_decay(name, p)].append(p)
    opt = torch.optim.AdamW(
        [
            {"params": groups[False], "weight_decay": WEIGHT_DECAY},
            {"params": groups[True], "weight_decay": 0.0},
        ],
        lr=spec["lr"],
        betas=BETAS,
        eps=EPS,
        fused=True,
    )
    model.train()
    forward = torch.compile(model) if spec["compile"] else model
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step(batch) -> float:
        out = forward(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    seen = {id(p): p.numel() for p in model.parameters()}
    info = {
        "baseline_rss_mb": baseline,
        "load_s": time.perf_counter() - t0,
        "params_total": sum(seen.values()),
        "params_trainable": sum(p.numel() for p in trainable),
        "lora_adapters": adapters,
        "precision": "fp32",
        "optimizer": "AdamW fused=True",
        "allocator_tuned": tuned,
        "compiled": bool(spec["compile"]),
    }
    return step, info


def worker_train(spec: dict) -> dict:
    import torch

    if spec["contender"].startswith("lmforge"):
        step, info = _lmforge_trainer(spec)
    else:
        step, info = _peer_trainer(spec)
    batches = _load_batches(spec["batches"], "train")[: spec["steps"]]
    info["rss_after_load_mb"] = _rss_mb()
    reset = _reset_peak_rss()
    losses, times = [], []
    for batch in batches:
        t0 = time.perf_counter()
        losses.append(step(batch))
        times.append(time.perf_counter() - t0)
    timed = times[spec["warmup_steps"] :] or times
    s = statistics.median(timed)
    return {
        **info,
        "losses": losses,
        "step_s": times,
        "seconds_per_step": s,
        "tokens_per_s": spec["batch"] * spec["seq"] / s,
        "train_peak_rss_mb": _status_mb("VmHWM") if reset else None,
        "process_peak_rss_mb": _process_peak_mb(),
        "threads": torch.get_num_threads(),
    }


def _timed(run, batch) -> float:
    t0 = time.perf_counter()
    run(batch)
    return time.perf_counter() - t0


def worker_infer(spec: dict) -> dict:
    import torch

    contender = spec["contender"]
    baseline = _rss_mb()
    if contender.startswith("lmforge"):
        from lmforge.artifact import load
        from lmforge.train.device import cpu_precision

        precision = cpu_precision().precision
        model = load(spec["dir"]).model.eval()
        if precision == "bf16":  # what `lmforge quantize --method bf16` does
            model = model.to(torch.bfloat16)
        forward = torch.compile(model) if "compiled" in contender else model

        def run(b):
            return forward(b["input_ids"], attention_mask=b["attention_mask"])

    else:
        from transformers import AutoModelForSequenceClassification

        precision = "bf16" if "bf16" in contender else "fp32"
        model = AutoModelForSequenceClassification.from_pretrained(
            spec["dir"],
            attn_implementation="sdpa",
            dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
        ).eval()
        model.config.use_cache = False
        forward = torch.compile(model) if "compiled" in contender else model

        def run(b):
            return forward(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits

    batches = _load_batches(spec["batches"], "infer")
    with torch.inference_mode():
        warm = _timed(run, batches[0])  # untimed: kernels, allocator, compilation
        n = min(len(batches), int(spec["budget_s"] // warm)) if warm > 0 else len(batches)
        times = [_timed(run, b) for b in batches[:n]]
    examples = spec["infer_batch"] * (len(times) or 1)
    seconds = sum(times) if times else warm
    return {
        "examples_per_s": examples / seconds,
        "timed_batches": len(times),
        "timed_warmup_call": not times,  # too slow for more: the first call is the measurement
        "warmup_s": warm,
        "precision": precision,
        "baseline_rss_mb": baseline,
        "process_peak_rss_mb": _process_peak_mb(),
        "threads": torch.get_num_threads(),
    }


def worker_int8(spec: dict) -> dict:
    import torch

    from lmforge.artifact import load
    from lmforge.model.quant import int8_kernel
    from lmforge.train.device import cpu_precision

    source = load(spec["dir"]).model.eval()
    source_dtype = cpu_precision().precision  # the source at its best dtype on this CPU
    if source_dtype == "bf16":
        source = source.to(torch.bfloat16)
    int8 = load(spec["int8_dir"]).model.eval()
    data = torch.load(spec["batches"])
    single = {k: v[:1] for k, v in data["latency"].items()}
    full = {k: v[0] for k, v in data["infer"].items()}
    out = {"kernel": int8_kernel(), "source_dtype": source_dtype}

    def run(model):
        return lambda b: model(b["input_ids"], attention_mask=b["attention_mask"])

    with torch.inference_mode():
        for key, batch, repeats in (
            ("batch_1", single, spec["latency_repeats"]),
            ("batch_full", full, spec["infer_batches"]),
        ):
            a, b = run(source)(batch).float(), run(int8)(batch).float()  # also the warm-up
            times = {"source": [], "int8": []}
            for _ in range(repeats):
                times["source"].append(_timed(run(source), batch))
                times["int8"].append(_timed(run(int8), batch))
            out[key] = {
                "shape": list(batch["input_ids"].shape),
                "source_p50_ms": 1e3 * statistics.median(times["source"]),
                "int8_p50_ms": 1e3 * statistics.median(times["int8"]),
                "repeats": repeats,
                "max_abs_logit_diff": float((a - b).abs().max()),
                "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            }
    out["process_peak_rss_mb"] = _process_peak_mb()
    return out


WORKERS = {
    "build": worker_build,
    "quantize": worker_quantize,
    "train": worker_train,
    "infer": worker_infer,
    "int8": worker_int8,
}


# --------------------------------------------------------------------------------------------
# The orchestrator
# --------------------------------------------------------------------------------------------


def call(kind: str, spec: dict, label: str) -> dict:
    """One worker in a fresh process; its result, or {"error": ...} (the run goes on)."""
    env = {
        **os.environ,
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        print(f"  {label}: FAILED ({wall:.0f} s)\n{tail}", file=sys.stderr, flush=True)
        return {"error": tail or f"exit code {proc.returncode}", "wall_s": wall}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["wall_s"] = wall
    return result


def make_batches(path: Path, shape: dict, args) -> None:
    """The fixed token ids both sides train and infer on: random text ids in the family's
    template, about half of the rows shorter than seq (padded), every batch seq long."""
    import torch

    g = torch.Generator().manual_seed(SEED)

    def rows(n: int, full: bool = False) -> dict:
        seq = args.seq
        ids = torch.full((n, seq), shape["pad"], dtype=torch.long)
        mask = torch.zeros((n, seq), dtype=torch.long)
        lengths = torch.randint(max(4, seq // 16), seq + 1, (n,), generator=g)
        lengths[torch.rand(n, generator=g) < 0.5] = seq  # truncated narratives fill the row
        lengths[0] = seq
        if full:
            lengths[:] = seq
        for i, n_tok in enumerate(lengths.tolist()):
            text = torch.randint(0, shape["text_ids"], (n_tok,), generator=g)
            if shape["cls"] is not None:
                text[0], text[-1] = shape["cls"], shape["sep"]
            where = slice(seq - n_tok, seq) if shape["padding_side"] == "left" else slice(0, n_tok)
            ids[i, where], mask[i, where] = text, 1
        return {"input_ids": ids, "attention_mask": mask}

    def stack(batches: list[dict]) -> dict:
        return {k: torch.stack([b[k] for b in batches]) for k in batches[0]}

    train = []
    for _ in range(args.steps):
        b = rows(args.batch)
        b["labels"] = torch.randint(0, args.labels, (args.batch,), generator=g)
        train.append(b)
    infer = [rows(args.infer_batch) for _ in range(args.infer_batches)]
    torch.save({"train": stack(train), "infer": stack(infer), "latency": rows(1, full=True)}, path)


def machine_facts() -> dict:
    import peft
    import torch
    import transformers
    from provenance import git_state

    from lmforge.machine import cpu_flags, cpu_model
    from lmforge.train.device import cpu_precision

    cpu = cpu_model()
    flags = cpu_flags()
    choice = cpu_precision()
    git = git_state()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "lmforge_precision": choice.precision,
        "lmforge_precision_reason": choice.reason,
        **git,
    }


def estimates(ckpt: dict[str, Path], args, precision: str) -> dict:
    """lmforge's estimate of each run's step, of the model lmforge builds from the checkpoint."""
    from lmforge.eval.estimate import estimate, resolve_model

    out = {}
    for run, r in RUNS.items():
        if run not in args.runs:
            continue
        shape = SHAPES[r["shape"]]
        _, cfg = resolve_model(str(ckpt[r["shape"]]))
        e = estimate(
            cfg,
            r["method"],
            args.batch,
            args.seq,
            precision,
            lora_r=LORA_R,
            lora_targets=tuple(shape["lora_targets"]),
            lora_dropout=0.0,
            num_labels=args.labels,
            frozen_dtype="bf16" if precision == "bf16" and r["method"] != "full" else "fp32",
        )
        out[run] = {
            "total_mb": e["memory_mb"]["total"],
            "memory_mb": e["memory_mb"],
            "params": e["params"],
            "trainable": e["trainable"],
        }
    return out


def rotate(xs: list, k: int) -> list:
    k %= len(xs)
    return xs[k:] + xs[:k]


def _r(x, nd=3):
    return None if x is None else round(x, nd)


def summarize_train(samples: dict, contenders: list[str], est: dict, args) -> dict:
    out = {}
    for run in args.runs:
        rows = {}
        for c in contenders:
            ok = [s for s in samples.get((run, c), []) if "error" not in s]
            if not ok:
                errors = [s["error"] for s in samples.get((run, c), [])]
                rows[c] = {"error": errors[-1] if errors else "not run"}
                continue
            first = ok[0]
            row = {
                "seconds_per_step": _r(_median(s["seconds_per_step"] for s in ok)),
                "seconds_per_step_by_round": [_r(s["seconds_per_step"]) for s in ok],
                "tokens_per_s": _r(_median(s["tokens_per_s"] for s in ok), 1),
                "first_step_s": _r(_median(s["step_s"][0] for s in ok)),
                "load_s": _r(_median(s["load_s"] for s in ok)),
                "losses": first["losses"],
                "final_loss": first["losses"][-1],
                "loss_rounds_max_abs_diff": max(
                    (max(abs(a - b) for a, b in zip(s["losses"], first["losses"])) for s in ok),
                    default=0.0,
                ),
                "params_total": first["params_total"],
                "params_trainable": first["params_trainable"],
                "lora_adapters": first["lora_adapters"],
                "precision": first["precision"],
                "optimizer": first["optimizer"],
                "baseline_rss_mb": _r(_median(s["baseline_rss_mb"] for s in ok), 0),
                "rss_after_load_mb": _r(_median(s["rss_after_load_mb"] for s in ok), 0),
                "train_peak_rss_mb": _r(_median(s["train_peak_rss_mb"] for s in ok), 0),
                "process_peak_rss_mb": _r(_median(s["process_peak_rss_mb"] for s in ok), 0),
                "threads": first["threads"],
            }
            for k in ("precision_reason", "frozen_dtype", "allocator_tuned", "compiled"):
                if k in first:
                    row[k] = first[k]
            e = est.get(run)
            if e and row["train_peak_rss_mb"] is not None:
                over = row["train_peak_rss_mb"] - row["baseline_rss_mb"]
                row["rss_vs_estimate"] = {
                    "train_peak_minus_baseline_mb": round(over),
                    "estimate_mb": round(e["total_mb"]),
                    "ratio": _r(over / e["total_mb"]),
                }
            rows[c] = row
        base = rows.get("lmforge", {})
        ours = {c: r for c, r in rows.items() if c.startswith("lmforge") and "error" not in r}
        peers = {c: r for c, r in rows.items() if c.startswith("peer") and "error" not in r}
        for c, r in rows.items():
            if c != "lmforge" and "losses" in base and "losses" in r:
                r["loss_max_abs_diff_vs_lmforge"] = max(
                    abs(a - b) for a, b in zip(r["losses"], base["losses"])
                )
        entry = {"contenders": rows, "estimate": est.get(run)}
        if ours and peers:
            # the headline: lmforge at its best against the fastest peer
            best = min(ours, key=lambda c: ours[c]["seconds_per_step"])
            fastest = min(peers, key=lambda c: peers[c]["seconds_per_step"])
            speedup = peers[fastest]["seconds_per_step"] / ours[best]["seconds_per_step"]
            entry["headline"] = {
                "lmforge": best,
                "fastest_peer": fastest,
                "speedup": _r(speedup),
                "goal": GOALS[run],
                "met": speedup >= GOALS[run],
                "loss_max_abs_diff_vs_fastest_peer": _r(
                    peers[fastest].get("loss_max_abs_diff_vs_lmforge"), 6
                ),
            }
        if "rss_vs_estimate" in base:
            ratio = base["rss_vs_estimate"]["ratio"]
            entry["rss_headline"] = {
                "ratio": ratio,
                "goal": f"within {GOALS['rss_within']:.0%}",
                "met": abs(ratio - 1) <= GOALS["rss_within"],
            }
        out[run] = entry
    return out


def summarize_infer(samples: dict, shapes: list[str], contenders: list[str]) -> dict:
    out = {}
    for shape in shapes:
        rows = {}
        for c in contenders:
            ok = [s for s in samples.get((shape, c), []) if "error" not in s]
            if not ok:
                errors = [s["error"] for s in samples.get((shape, c), [])]
                rows[c] = {"error": errors[-1] if errors else "not run"}
                continue
            rows[c] = {
                "examples_per_s": _r(_median(s["examples_per_s"] for s in ok), 2),
                "examples_per_s_by_round": [_r(s["examples_per_s"], 2) for s in ok],
                "timed_batches": ok[0]["timed_batches"],
                "timed_warmup_call": ok[0]["timed_warmup_call"],
                "precision": ok[0]["precision"],
                "process_peak_rss_mb": _r(_median(s["process_peak_rss_mb"] for s in ok), 0),
            }
        entry = {"contenders": rows}
        ours = {c: r for c, r in rows.items() if c.startswith("lmforge") and "error" not in r}
        peers = {c: r for c, r in rows.items() if c.startswith("peer") and "error" not in r}
        if ours and peers:
            mine = max(ours, key=lambda c: ours[c]["examples_per_s"])
            best = max(peers, key=lambda c: peers[c]["examples_per_s"])
            speedup = ours[mine]["examples_per_s"] / peers[best]["examples_per_s"]
            entry["headline"] = {
                "lmforge": mine,
                "best_peer": best,
                "speedup": _r(speedup),
                "goal": GOALS["inference"],
                "met": speedup >= GOALS["inference"],
            }
        out[shape] = entry
    return out


def summarize_int8(samples: dict, shapes: list[str], quantized: dict) -> dict:
    out = {}
    for shape in shapes:
        ok = [s for s in samples.get(shape, []) if "error" not in s]
        if not ok:
            errors = [s["error"] for s in samples.get(shape, [])]
            out[shape] = {"error": errors[-1] if errors else "not run"}
            continue
        entry = {
            "kernel": ok[0]["kernel"],
            "source_dtype": ok[0]["source_dtype"],
            "checkpoint": quantized.get(shape),
        }
        for key in ("batch_1", "batch_full"):
            src = _median(s[key]["source_p50_ms"] for s in ok)
            q = _median(s[key]["int8_p50_ms"] for s in ok)
            entry[key] = {
                "shape": ok[0][key]["shape"],
                "source_p50_ms": _r(src, 2),
                "int8_p50_ms": _r(q, 2),
                "speedup": _r(src / q),
                "goal": GOALS["int8"],
                "met": src / q >= GOALS["int8"],
                "repeats_per_round": ok[0][key]["repeats"],
                "max_abs_logit_diff": _r(max(s[key]["max_abs_logit_diff"] for s in ok), 5),
                "argmax_agreement": _r(min(s[key]["argmax_agreement"] for s in ok)),
            }
        out[shape] = entry
    return out


def _ok(met: bool) -> str:
    return "met" if met else "NOT met"


def print_table(result: dict) -> None:
    p = lambda s="": print(s, file=sys.stderr)  # noqa: E731
    st = result["settings"]
    p()
    p(
        f"finetune_speed: batch {st['batch']} x {st['seq']}, {st['labels']} labels, "
        f"{st['steps']} steps (median of steps {st['warmup_steps'] + 1}-{st['steps']}), "
        f"{st['rounds']} round(s), layers {st['layers']}, {result['machine']['cpu']}, "
        f"{result['machine']['threads']} threads, lmforge {result['machine']['lmforge_precision']}"
    )
    p()
    p(
        "| run | contender | s/step | tok/s | final loss | max abs dloss vs lmforge | trainable | "
        "peak RSS MB (steps / process) | (steps - baseline) / estimate MB |"
    )
    p("|---|---|---|---|---|---|---|---|---|")
    for run, entry in result["train"].items():
        for c, r in entry["contenders"].items():
            if "error" in r:
                p(f"| {run} | {c} | failed: {r['error'].splitlines()[-1][:60]} |")
                continue
            diff = r.get("loss_max_abs_diff_vs_lmforge")
            rss = r.get("rss_vs_estimate")
            est = (
                f"{rss['train_peak_minus_baseline_mb']:,} / {rss['estimate_mb']:,} = {rss['ratio']:.2f}"
                if rss
                else "-"
            )
            p(
                f"| {run} | {c} | {r['seconds_per_step']:.3f} | {r['tokens_per_s']:,.0f} | "
                f"{r['final_loss']:.4f} | {'-' if diff is None else f'{diff:.2e}'} | "
                f"{r['params_trainable']:,} | {r['train_peak_rss_mb']:,.0f} / "
                f"{r['process_peak_rss_mb']:,.0f} | {est} |"
            )
    if result["inference"]:
        p()
        p(
            f"| inference {st['infer_batch']} x {st['seq']} | contender | examples/s | timed batches |"
        )
        p("|---|---|---|---|")
        for shape, entry in result["inference"].items():
            for c, r in entry["contenders"].items():
                if "error" in r:
                    p(f"| {shape} | {c} | failed | |")
                    continue
                note = " (the warm-up call)" if r["timed_warmup_call"] else ""
                p(f"| {shape} | {c} | {r['examples_per_s']:,.2f} | {r['timed_batches']}{note} |")
    if result["int8"]:
        p()
        p("| int8 | batch | source p50 ms | int8 p50 ms | speedup | argmax agreement |")
        p("|---|---|---|---|---|---|")
        for shape, entry in result["int8"].items():
            if "error" in entry:
                p(f"| {shape} | failed | | | | |")
                continue
            for key in ("batch_1", "batch_full"):
                r = entry[key]
                p(
                    f"| {shape} ({entry['kernel']}) | {' x '.join(map(str, r['shape']))} | "
                    f"{r['source_p50_ms']:,.1f} | {r['int8_p50_ms']:,.1f} | "
                    f"{r['speedup']:.2f}x | {r['argmax_agreement']:.3f} |"
                )
    p()
    p("headlines (lmforge against the fastest peer; goals beside):")
    for line in result["headlines"]:
        p(f"  {line}")
    p()


def headlines(result: dict) -> list[str]:
    lines = []
    for run, entry in result["train"].items():
        h = entry.get("headline")
        if h:
            lines.append(
                f"{run}: {h['lmforge']} {h['speedup']:.2f}x vs {h['fastest_peer']} "
                f"(goal >= {h['goal']}x: "
                f"{_ok(h['met'])}); loss curves max |diff| {h['loss_max_abs_diff_vs_fastest_peer']:.2e}"
            )
        else:
            lines.append(f"{run}: no ratio (a contender failed)")
        r = entry.get("rss_headline")
        if r:
            lines.append(
                f"{run}: lmforge's step peak RSS over baseline / estimate = {r['ratio']:.2f} "
                f"(goal {r['goal']}: {_ok(r['met'])})"
            )
    for shape, entry in result["inference"].items():
        h = entry.get("headline")
        if h:
            lines.append(
                f"inference {shape}: {h['lmforge']} {h['speedup']:.2f}x vs {h['best_peer']} (goal >= "
                f"{h['goal']}x: {_ok(h['met'])})"
            )
    for shape, entry in result["int8"].items():
        for key in ("batch_1", "batch_full"):
            r = entry.get(key)
            if r:
                lines.append(
                    f"int8 {shape} {' x '.join(map(str, r['shape']))}: {r['speedup']:.2f}x vs "
                    f"{entry['source_dtype']} source (goal >= {r['goal']}x: {_ok(r['met'])})"
                )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", type=int, default=0, help="override every model's layer count")
    ap.add_argument("--labels", type=int, default=45)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of timing")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of runs")
    ap.add_argument(
        "--sections", default="train,infer,int8", help="comma-separated: train, infer, int8"
    )
    ap.add_argument(
        "--peer-compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add torch.compile'd peer contenders (training and fp32 inference)",
    )
    ap.add_argument(
        "--peer-bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the peer's bf16 inference",
    )
    ap.add_argument(
        "--peer-allocator",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned: the peer gets lmforge's glibc malloc settings too",
    )
    ap.add_argument("--infer-batch", type=int, default=32)
    ap.add_argument("--infer-batches", type=int, default=3, help="timed inference batches")
    ap.add_argument(
        "--infer-budget", type=float, default=90.0, help="seconds of timed inference per contender"
    )
    ap.add_argument("--latency-repeats", type=int, default=20, help="int8: calls at batch 1")
    ap.add_argument("--workdir", help="keep checkpoints here (default: a temporary directory)")
    ap.add_argument(
        "--out",
        default=str(Path(__file__).with_name("results-finetune_speed.json")),
        help="JSON output file, or - for stdout",
    )
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.spec))
        print("RESULT " + json.dumps(result), flush=True)
        return

    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    sections = {s.strip() for s in args.sections.split(",")}
    unknown = [r for r in args.runs if r not in RUNS] + sorted(
        sections - {"train", "infer", "int8"}
    )
    if unknown:
        ap.error(f"unknown run or section: {', '.join(unknown)}")
    t_start = time.perf_counter()
    layers = {
        name: (args.layers or s["layers"]) for name, s in SHAPES.items()
    }  # the real count unless overridden
    layers_note = None
    if layers["modernbert"] < MODERNBERT_MIN_LAYERS:
        layers_note = (
            f"ModernBERT gets {MODERNBERT_MIN_LAYERS} layers, not {layers['modernbert']}: with "
            "one global layer lmforge cannot read the global/local period from transformers 5's "
            "config.json (layer_types), and would make every layer global"
        )
        print(f"note: {layers_note}", file=sys.stderr)
        layers["modernbert"] = MODERNBERT_MIN_LAYERS
    shapes = [s for s in SHAPES if any(RUNS[r]["shape"] == s for r in args.runs)] or list(SHAPES)
    machine = machine_facts()
    precision = machine["lmforge_precision"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="finetune_speed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ckpt, batches, quantized = {}, {}, {}
        for shape in shapes:
            ckpt[shape] = work / f"{shape}-{layers[shape]}l-{args.labels}"
            if not (ckpt[shape] / "config.json").is_file():
                spec = {"dir": str(ckpt[shape]), "shape": shape, "layers": layers[shape]}
                built = call("build", {**spec, "labels": args.labels}, f"build {shape}")
                if "error" in built:
                    raise SystemExit(f"could not build the {shape} checkpoint")
                print(
                    f"built {shape}: {built['params']:,} parameters, {built['mb']:,.0f} MB "
                    f"({built['wall_s']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            batches[shape] = work / f"batches-{shape}.pt"
            make_batches(batches[shape], SHAPES[shape], args)
            if "int8" in sections:
                q_dir = work / f"{ckpt[shape].name}-int8"
                shutil.rmtree(q_dir, ignore_errors=True)
                quantized[shape] = call(
                    "quantize", {"dir": str(ckpt[shape]), "out": str(q_dir)}, f"quantize {shape}"
                )
        est = estimates(ckpt, args, precision) if "train" in sections else {}

        contenders = ["lmforge", "peer"]
        contenders += ["lmforge-compiled", "peer-compiled"] if args.peer_compile else []
        infer_contenders = ["lmforge", "peer-fp32"]
        infer_contenders += ["lmforge-compiled"] if args.peer_compile else []
        infer_contenders += ["peer-bf16"] if args.peer_bf16 else []
        infer_contenders += ["peer-fp32-compiled"] if args.peer_compile else []
        train_samples: dict = {}
        infer_samples: dict = {}
        int8_samples: dict = {}
        common = {
            "labels": args.labels,
            "batch": args.batch,
            "seq": args.seq,
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "lr": args.lr,
            "peer_allocator": args.peer_allocator,
        }
        for rnd in range(args.rounds):
            tag = f"[round {rnd + 1}/{args.rounds}]"
            if "train" in sections:
                for run in args.runs:
                    shape = RUNS[run]["shape"]
                    for c in rotate(contenders, rnd):
                        scratch = work / f"scratch-{run}-{c}"
                        spec = {
                            **common,
                            "dir": str(ckpt[shape]),
                            "shape": shape,
                            "method": RUNS[run]["method"],
                            "contender": c,
                            "compile": c.endswith("compiled"),
                            "batches": str(batches[shape]),
                            "scratch": str(scratch),
                        }
                        res = call("train", spec, f"{tag} train {run} {c}")
                        shutil.rmtree(scratch, ignore_errors=True)
                        train_samples.setdefault((run, c), []).append(res)
                        if "error" not in res:
                            print(
                                f"{tag} train {run} {c}: {res['seconds_per_step']:.3f} s/step, "
                                f"loss {res['losses'][0]:.4f} -> {res['losses'][-1]:.4f}, "
                                f"peak RSS {res['train_peak_rss_mb']:,.0f} MB "
                                f"({res['wall_s']:.0f} s)",
                                file=sys.stderr,
                                flush=True,
                            )
            if "infer" in sections:
                for shape in shapes:
                    for c in rotate(infer_contenders, rnd):
                        spec = {
                            "dir": str(ckpt[shape]),
                            "contender": c,
                            "batches": str(batches[shape]),
                            "infer_batch": args.infer_batch,
                            "budget_s": args.infer_budget,
                        }
                        res = call("infer", spec, f"{tag} infer {shape} {c}")
                        infer_samples.setdefault((shape, c), []).append(res)
                        if "error" not in res:
                            print(
                                f"{tag} infer {shape} {c}: {res['examples_per_s']:,.2f} "
                                f"examples/s ({res['wall_s']:.0f} s)",
                                file=sys.stderr,
                                flush=True,
                            )
            if "int8" in sections:
                for shape in shapes:
                    if "error" in quantized.get(shape, {}):
                        continue
                    spec = {
                        "dir": str(ckpt[shape]),
                        "int8_dir": str(work / f"{ckpt[shape].name}-int8"),
                        "batches": str(batches[shape]),
                        "latency_repeats": args.latency_repeats,
                        "infer_batches": args.infer_batches,
                    }
                    res = call("int8", spec, f"{tag} int8 {shape}")
                    int8_samples.setdefault(shape, []).append(res)
                    if "error" not in res:
                        print(
                            f"{tag} int8 {shape}: batch 1 {res['batch_1']['source_p50_ms']:.1f} "
                            f"-> {res['batch_1']['int8_p50_ms']:.1f} ms, batch "
                            f"{args.infer_batch} {res['batch_full']['source_p50_ms']:.0f} -> "
                            f"{res['batch_full']['int8_p50_ms']:.0f} ms ({res['wall_s']:.0f} s)",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "finetune_speed",
        "command": " ".join(["python", "benchmarks/finetune_speed.py", *sys.argv[1:]]),
        "machine": machine,
        "settings": {
            "batch": args.batch,
            "seq": args.seq,
            "labels": args.labels,
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "rounds": args.rounds,
            "layers": layers,
            "layers_note": layers_note,
            "estimate_of": "lmforge.eval.estimate.estimate on resolve_model(checkpoint dir): the "
            "model lmforge builds (at full size the same config as from_preset)",
            "lr": args.lr,
            "schedule": "constant, no warmup",
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": f"{WEIGHT_DECAY} on matrices; none on norms, embeddings, biases (both sides)",
            "grad_clip": GRAD_CLIP,
            "dropout": "0 everywhere (model and LoRA) for the loss-equality comparison",
            "lora": {
                "r": LORA_R,
                "alpha": LORA_ALPHA,
                "targets": {s: SHAPES[s]["lora_targets"] for s in SHAPES},
                "peft_modules_to_save": {s: SHAPES[s]["peft_modules_to_save"] for s in SHAPES},
                "init": "A kaiming-uniform(a=sqrt 5) seeded per module, identical on both sides; B zero",
                "modernbert_note": "lmforge adapts q, k, v (and gate, up) separately where peft "
                "adapts the fused Wqkv (and Wi): different parametrizations, so modernbert-lora's "
                "curves are not expected to agree after the first step",
            },
            "head_init": "the checkpoint's head (transformers' init), loaded by both sides",
            "padding": {s: SHAPES[s]["padding_side"] for s in SHAPES},
            "pooling": {"qwen": "last non-pad token", "modernbert": "mean (classifier_pooling)"},
            "tokens_per_s": "padded tokens (batch x seq) per second",
            "peer": "AutoModelForSequenceClassification, attn_implementation=sdpa, fp32 training, "
            "torch.optim.AdamW(fused=True), model loss, clip_grad_norm_",
            "peer_allocator": args.peer_allocator,
            "peer_compile": args.peer_compile,
            "lmforge": "build_classifier + Trainer.train_step (fit()'s eval/checkpoints left out)",
            "rss": "train_peak_rss_mb: VmHWM reset after loading, read after the steps; "
            "baseline_rss_mb: RSS after imports, before weights; the estimate counts live "
            "tensors only, so it is compared with train peak - baseline",
            "infer_batch": args.infer_batch,
            "infer_batches": args.infer_batches,
            "infer_budget_s": args.infer_budget,
            "latency_repeats": args.latency_repeats,
        },
        "train": summarize_train(train_samples, contenders, est, args)
        if "train" in sections
        else {},
        "inference": summarize_infer(infer_samples, shapes, infer_contenders)
        if "infer" in sections
        else {},
        "int8": summarize_int8(int8_samples, shapes, quantized) if "int8" in sections else {},
    }
    result["headlines"] = headlines(result)
    result["wall_seconds"] = round(time.perf_counter() - t_start)
    print_table(result)
    text = json.dumps(result, indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out} ({result['wall_seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
