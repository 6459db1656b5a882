"""Compression recipes: quantize a trained model and measure what it cost.

    lmforge quantize runs/demo/cls-decoder-lora --method int8 --out runs/demo/cls-decoder-int8
    lmforge quantize runs/demo/cls-decoder-lora --method int4 --group-size 128 --out runs/demo/cls-decoder-int4

A quantized classifier is a classify run directory like its source (config, task, labels,
tokenizer), so `lmforge classify eval` and `lmforge compare` work on it; its summary.json
holds the same metrics, speed (eval/bench.py's protocol) and size on disk, plus what it was
quantized from.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from lmforge.artifact import load, save_model_artifact
from lmforge.errors import CheckpointError
from lmforge.eval.bench import dir_size_mb
from lmforge.model.quant import (
    METHODS,
    check_group_size,
    int8_kernel,
    quantize_model,
    resolve_group_size,
)
from lmforge.utils import read_json, staging_dir, write_json

# What `lmforge tradeoff` and the report say about each method on a CPU.
SPEED_NOTE = {
    "int8": "int8 GEMM (oneDNN per-row or fbgemm per-tensor activations, whichever this CPU runs faster): smaller and faster",
    "int8-weight": "int8 weights dequantized for an fp32 matmul: smaller, not faster",
    "int4": "4-bit weights dequantized for the matmul: smaller, not faster",
    "bf16": "bf16 matmuls: faster where the CPU has bf16 units (AVX-512 bf16, AMX)",
    "fp16": "fp16 storage: smaller; CPUs compute it slowly",
}
# Files of a classify run that a quantized copy keeps (so eval, predict and compare work).
RUN_FILES = ("config.yaml", "labels.json", "task")
MODEL_FILES = ("model.safetensors", "model.json")  # what checkpoint_mb counts, as classify does


def quantize(
    src: str | os.PathLike, out: str | os.PathLike, method: str, group_size: int | None = None
) -> dict:
    """A quantized copy of a trained artifact at ``out`` (atomic), evaluated like its source.

    int4's ``group_size`` must divide the width of every layer it quantizes; given, a size
    that does not is refused (with the sizes that fit); None picks the largest size up to 128
    that fits, and the summary says so. Other methods ignore it."""
    src = Path(src)
    if method not in METHODS:
        raise CheckpointError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    if group_size is not None:
        check_group_size(group_size)
    if method == "int8":
        int8_kernel()  # a bad LMFORGE_INT8_KERNEL is refused, and a first measurement made, first
    loaded = load(src)
    if "quantization" in loaded.meta:
        raise CheckpointError(
            f"{src} is already quantized ({loaded.meta['quantization']['method']}); quantize "
            "the full-precision run it came from"
        )
    info: dict = {"method": method, "source": str(src)}
    if method == "int4":
        # Checked before anything is written; the choice is the artifact's (artifact.py reads it).
        group_size, note = resolve_group_size(loaded.model, group_size)
        info["group_size"] = group_size
        if note:
            print(f"[quantize] note: {note}", file=sys.stderr)
            info["group_size_note"] = note
    model = quantize_model(loaded.model, method, group_size)
    with staging_dir(out) as tmp:
        save_model_artifact(tmp, model, loaded.kind, extra_meta={"quantization": info})
        if loaded.tokenizer is not None:
            loaded.tokenizer.save(tmp)
        for name in RUN_FILES:
            if (src / name).is_dir():
                shutil.copytree(src / name, tmp / name)
            elif (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        summary = {"stage": "quantize", **info, "speed_note": SPEED_NOTE[method],
                   "checkpoint_mb": dir_size_mb(tmp, MODEL_FILES),
                   "source_checkpoint_mb": dir_size_mb(src, MODEL_FILES)}  # fmt: skip
        write_json(tmp / "summary.json", summary)
    if loaded.kind == "sequence_classifier" and (Path(out) / "config.yaml").is_file():
        summary.update(_evaluate_classifier(Path(out), src))
        write_json(Path(out) / "summary.json", summary)
    elif loaded.kind == "causal_lm" and (src / "config.yaml").is_file():
        summary.update(_evaluate_lm(Path(out), src))
        write_json(Path(out) / "summary.json", summary)
    return summary


def _evaluate_classifier(run: Path, src: Path) -> dict:
    """The source run's splits and speed protocol, on the quantized model."""
    from lmforge.stages import classify

    cfg = classify._run_config(run)
    cfg.speed = True
    loaded = load(run)
    task = classify._run_task(run, cfg)
    out = classify.score(loaded.model, loaded.tokenizer, task, cfg, run)
    src_summary = read_json(src / "summary.json") if (src / "summary.json").is_file() else {}
    for key in ("params_total", "params_trainable"):
        if key in src_summary:
            out[key] = src_summary[key]
    return out


def _evaluate_lm(run: Path, src: Path) -> dict:
    """Val loss and bits per byte of the quantized LM and of its source, in fp32 on the same
    held-out batches as pre-training (the source's own summary was measured under autocast),
    and the time each pass took."""
    import time

    import torch

    from lmforge.config import load_config
    from lmforge.data.shards import ShardDataset, iter_eval_batches
    from lmforge.stages.pretrain import PretrainConfig
    from lmforge.tokenizer import token_byte_lengths
    from lmforge.train.objectives import lm_eval

    cfg = load_config(PretrainConfig, src / "config.yaml")
    shards = Path(cfg.data.shards) if cfg.data.shards else src / "shards"
    if not (shards / "val").is_dir():
        return {"eval_note": f"no held-out shards at {shards}: val bpb not measured"}
    val = ShardDataset(shards, "val")
    out = {}
    for name, path in (("", run), ("source_", src)):
        loaded = load(path)
        token_bytes = torch.tensor(token_byte_lengths(loaded.tokenizer), dtype=torch.long)
        batches = iter_eval_batches(
            val, cfg.trainer.micro_batch_size, cfg.data.seq_len, cfg.data.eval_batches
        )
        t0 = time.perf_counter()
        result = lm_eval(loaded.model.eval(), batches, token_bytes)
        out.update({name + k: v for k, v in result.items()})
        out[name + "eval_seconds"] = time.perf_counter() - t0
    out["val_bpb_change"] = out["val_bpb"] - out["source_val_bpb"]
    return out


# --------------------------------------------------------------------------------------------
# Distillation: the teacher's logits, computed once
# --------------------------------------------------------------------------------------------


def text_id(text: str) -> str:
    """An example's id in a logits cache: a hash of its text (stable across re-subsampling)."""
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:16]


def teacher_logits(
    teacher: str | os.PathLike, out: str | os.PathLike, task_path: str | None = None,
    max_examples: int | None = None,
) -> dict:  # fmt: skip
    """Run a trained classifier over the training examples a student will see (the teacher
    run's own task and subsample unless given) and cache its logits: fp16 safetensors + ids."""
    from safetensors.numpy import save_file as save_np

    from lmforge.data.tasks import subsample
    from lmforge.stages import classify

    teacher = Path(teacher)
    cfg = classify._run_config(teacher)
    if task_path:
        cfg.task.path = task_path
    if max_examples is not None:
        cfg.task.max_train_examples = max_examples
    loaded = load(teacher)
    if task_path:
        import tempfile

        task = classify.resolve_task(cfg.task, Path(tempfile.mkdtemp()) / "task")
    else:
        task = classify._run_task(teacher, cfg)
    rows = subsample(task.train, cfg.task.max_train_examples, cfg.task.seed)
    texts = [t for t, _ in rows]
    logits, _, _ = classify.predict_logits(
        loaded.model, loaded.tokenizer, texts, cfg.task.max_length, cfg.eval_batch_size,
        cfg.padding_side,
    )  # fmt: skip
    fitted = read_json(teacher / "summary.json").get("temperature", 1.0)
    with staging_dir(out) as tmp:
        save_np({"logits": logits.astype("float16")}, str(tmp / "logits.safetensors"))
        info = {"teacher": str(teacher), "labels": task.label_names, "temperature": fitted,
                "ids": [text_id(t) for t in texts]}  # fmt: skip
        write_json(tmp / "examples.json", info)
    return {"teacher": str(teacher), "examples": len(texts), "labels": len(task.label_names),
            "temperature": fitted, "out": str(out)}  # fmt: skip


def aligned_teacher_logits(distill, texts: list[str], label_names: list[str]):
    """The cached teacher logits in the order of the student's training texts; refuses a
    cache whose labels differ or that lacks some of the student's examples."""
    from safetensors.numpy import load_file as load_np

    folder = Path(distill.teacher_logits)
    if not (folder / "examples.json").is_file():
        raise CheckpointError(
            f"{folder} is not a teacher-logits cache; make one with `lmforge distill logits "
            "--teacher RUN --out DIR`"
        )
    info = read_json(folder / "examples.json")
    if info["labels"] != label_names:
        extra = sorted(set(info["labels"]) ^ set(label_names))
        raise CheckpointError(
            f"{folder}: the teacher's labels differ from the task's "
            f"({len(info['labels'])} vs {len(label_names)}; e.g. {extra[:3] or 'the order'}); "
            "distil from a teacher trained on the same task"
        )
    index = {i: k for k, i in enumerate(info["ids"])}
    missing = [t for t in texts if text_id(t) not in index]
    if missing:
        raise CheckpointError(
            f"{folder}: no teacher logits for {len(missing)} of the student's {len(texts)} "
            f"training examples (e.g. {missing[0][:60]!r}); compute them for the same task and "
            "subsample (`lmforge distill logits --max-examples N`)"
        )
    logits = load_np(str(folder / "logits.safetensors"))["logits"].astype("float32")
    logits = logits[[index[text_id(t)] for t in texts]]
    if distill.calibrate_teacher:
        logits = logits / info["temperature"]
    return logits


def distill_grid(cfg, temperatures: list[float], alphas: list[float]) -> list[dict]:
    """One student per (T, alpha) under cfg.out_dir/T{T}-a{alpha}, each a normal resumable run
    (a finished one is read back, not retrained); returns the table rows."""
    from lmforge.stages import classify

    rows = []
    for t in temperatures:
        for a in alphas:
            out = Path(cfg.out_dir) / f"T{t:g}-a{a:g}"
            if (out / "summary.json").is_file():
                summary = read_json(out / "summary.json")
            else:
                run = cfg.model_copy(deep=True)
                run.out_dir = str(out)
                run.distill.temperature, run.distill.alpha = t, a
                summary = classify.train(run)
            split = summary.get("test") or summary
            rows.append({
                "temperature": t, "alpha": a, "run": str(out),
                "macro_f1": split["macro_f1"], "tail_f1": split["tier_macro_f1"]["tail"],
                "rare_f1": split["tier_macro_f1"]["rare"], "ece": split["ece"],
                "accuracy": split["accuracy"],
            })  # fmt: skip
    write_json(Path(cfg.out_dir) / "grid.json", rows)
    return rows
