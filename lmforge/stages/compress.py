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
from pathlib import Path

from lmforge.artifact import load, save_model_artifact
from lmforge.errors import CheckpointError
from lmforge.eval.bench import dir_size_mb
from lmforge.model.quant import METHODS, quantize_model
from lmforge.utils import read_json, staging_dir, write_json

# What `lmforge tradeoff` and the report say about each method on a CPU.
SPEED_NOTE = {
    "int8": "int8 GEMM (torch._int_mm) with activations quantized per row on the fly: smaller and faster",
    "int8-weight": "int8 weights dequantized for an fp32 matmul: smaller, not faster",
    "int4": "4-bit weights dequantized for the matmul: smaller, not faster",
    "bf16": "bf16 matmuls: faster where the CPU has bf16 units (AVX-512 bf16, AMX)",
    "fp16": "fp16 storage: smaller; CPUs compute it slowly",
}
# Files of a classify run that a quantized copy keeps (so eval, predict and compare work).
RUN_FILES = ("config.yaml", "labels.json", "task")


def quantize(
    src: str | os.PathLike, out: str | os.PathLike, method: str, group_size: int = 128
) -> dict:
    src = Path(src)
    loaded = load(src)
    if "quantization" in loaded.meta:
        raise CheckpointError(
            f"{src} is already quantized ({loaded.meta['quantization']['method']}); quantize "
            "the full-precision run it came from"
        )
    if method not in METHODS:
        raise CheckpointError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    model = quantize_model(loaded.model, method, group_size)
    info = {"method": method, "group_size": group_size, "source": str(src)}
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
                   "checkpoint_mb": dir_size_mb(tmp),
                   "source_checkpoint_mb": dir_size_mb(src)}  # fmt: skip
        write_json(tmp / "summary.json", summary)
    if loaded.kind == "sequence_classifier" and (Path(out) / "config.yaml").is_file():
        summary.update(_evaluate_classifier(Path(out), src))
        write_json(Path(out) / "summary.json", summary)
    return summary


def _evaluate_classifier(run: Path, src: Path) -> dict:
    """The source run's splits and speed protocol, on the quantized model."""
    from lmforge.stages import classify

    cfg = classify._run_config(run)
    loaded = load(run)
    task = classify._run_task(run, cfg)
    out: dict = {}
    for split in cfg.eval_splits:
        report = classify.evaluate_run(loaded.model, loaded.tokenizer, task, split, run, cfg)
        out[split] = classify.headline(report)
    texts = [t for t, _ in (task.val or task.train)[:200]]
    out.update(classify.speed(loaded.model, loaded.tokenizer, texts, cfg))
    first = cfg.eval_splits[0] if cfg.eval_splits else None
    if first in out:
        out.update(out[first])
    src_summary = read_json(src / "summary.json") if (src / "summary.json").is_file() else {}
    for key in ("params_total", "params_trainable"):
        if key in src_summary:
            out[key] = src_summary[key]
    return out
