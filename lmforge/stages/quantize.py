"""Quantization recipe: a quantized copy of a trained model, and what it cost.

    lmforge quantize runs/demo/cls-decoder-lora --method int8 --out runs/demo/cls-decoder-int8
    lmforge quantize runs/demo/cls-decoder-lora --method int4 --group-size 128 --out runs/demo/cls-decoder-int4
    lmforge quantize runs/demo/cls-decoder-lora --method onnx-int8 --out runs/demo/cls-decoder-onnx-int8

A quantized classifier is a classify run directory like its source (config, task, labels,
tokenizer), so `lmforge classify eval` and `lmforge compare` work on it; its summary.json
holds the same metrics, speed (eval/bench.py's protocol) and size on disk, plus what it was
quantized from.

`onnx` and `onnx-int8` (classifiers only) write model.onnx instead of model.safetensors: the
model exported to ONNX (model/onnx_export.py), as is or with ONNX Runtime's int8 weights. The
copy is scored by the same eval, its logits computed by an ONNX Runtime session, so
`lmforge tradeoff` lists it beside int8 and int4 and `compare` reads its predictions
(`classify eval` and `predict` load torch weights, and do not open it).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import torch

from lmforge.artifact import load, save_model_artifact
from lmforge.config import read_yaml, validate
from lmforge.data.shards import LMData, ShardDataset, iter_eval_batches
from lmforge.errors import CheckpointError
from lmforge.eval.bench import dir_size_mb
from lmforge.eval.classifier import read_settings, run_task, score
from lmforge.model import ONNX_METHODS
from lmforge.model.onnx_export import (
    ONNX_FILE,
    OnnxClassifier,
    check_exportable,
    export_classifier,
    quantize_int8,
)
from lmforge.model.quant import (
    METHODS,
    check_group_size,
    int8_kernel,
    quantize_model,
    resolve_group_size,
)
from lmforge.stages.summaries import ClassifierSummary, QuantizeSummary
from lmforge.tokenizer import Tokenizer, token_byte_lengths
from lmforge.train.objectives import lm_eval
from lmforge.train.trainer import TrainerConfig
from lmforge.utils import staging_dir, write_json

# What `lmforge tradeoff` and the report say about each method on a CPU.
SPEED_NOTE = {
    "int8": "int8 GEMM (oneDNN per-row or fbgemm per-tensor activations, whichever this CPU runs faster): smaller and faster",
    "int8-weight": "int8 weights dequantized for an fp32 matmul: smaller, not faster",
    "int4": "4-bit weights dequantized for the matmul: smaller, not faster",
    "bf16": "bf16 matmuls: faster where the CPU has bf16 units (AVX-512 bf16, AMX)",
    "fp16": "fp16 storage: smaller; CPUs compute it slowly",
    "onnx": "ONNX Runtime, fp32: the same maths in ORT's kernels, its graph optimised",
    "onnx-int8": "ONNX Runtime, int8 weights (per channel, 7-bit) and activations quantized per "
    "call (MatMulInteger): smaller; faster where ORT's int8 GEMM beats its fp32 one",
}
# Files of a classify run that a quantized copy keeps (so eval, predict and compare work).
RUN_FILES = ("config.yaml", "labels.json", "task")
MODEL_FILES = ("model.safetensors", "model.json")  # what checkpoint_mb counts, as classify does
ONNX_MODEL_FILES = (ONNX_FILE, ONNX_FILE + ".data", "model.json")  # .data: weights over 1 GB


def quantize(
    src: str | os.PathLike, out: str | os.PathLike, method: str, group_size: int | None = None
) -> dict:
    """A quantized copy of a trained artifact at ``out`` (atomic), evaluated like its source.

    ``onnx`` / ``onnx-int8``: an ONNX copy of a classifier (model.onnx), checked against the
    model's logits before it is kept and scored through ONNX Runtime.

    int4's ``group_size`` must divide the width of every layer it quantizes; given, a size
    that does not is refused (with the sizes that fit); None picks the largest size up to 128
    that fits, and the summary says so. Other methods ignore it."""
    src = Path(src)
    if method not in METHODS + ONNX_METHODS:
        raise CheckpointError(
            f"unknown method '{method}'; use one of {', '.join(METHODS + ONNX_METHODS)}"
        )
    if group_size is not None:
        check_group_size(group_size)
    if method == "int8":
        int8_kernel()  # a bad LMFORGE_INT8_KERNEL is refused, and a first measurement made, first
    if (src / ONNX_FILE).is_file():
        raise CheckpointError(
            f"{src} is an ONNX copy ({ONNX_FILE}); quantize the full-precision run it came from"
        )
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
    onnx = method in ONNX_METHODS
    if onnx:  # quant.py knows nothing of these: model/onnx_export.py makes the copy
        check_exportable(loaded.kind, src)
    else:
        model = quantize_model(loaded.model, method, group_size)
    with staging_dir(out) as tmp:
        if onnx:
            info["onnx"] = _write_onnx(tmp, loaded, method)
        else:
            save_model_artifact(tmp, model, loaded.kind, extra_meta={"quantization": info})
        if loaded.tokenizer is not None:
            loaded.tokenizer.save(tmp)
        for name in RUN_FILES:
            if (src / name).is_dir():
                shutil.copytree(src / name, tmp / name)
            elif (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        summary = {
            "stage": "quantize",
            **info,
            "speed_note": SPEED_NOTE[method],
            "checkpoint_mb": dir_size_mb(tmp, ONNX_MODEL_FILES if onnx else MODEL_FILES),
            "source_checkpoint_mb": dir_size_mb(src, MODEL_FILES),
        }
        write_json(tmp / "summary.json", QuantizeSummary(**summary).dump())
    if loaded.kind == "sequence_classifier" and (Path(out) / "config.yaml").is_file():
        summary.update(_evaluate_classifier(Path(out), src))
        write_json(Path(out) / "summary.json", QuantizeSummary(**summary).dump())
    elif loaded.kind == "causal_lm" and (src / "config.yaml").is_file():
        summary.update(_evaluate_lm(Path(out), src))
        write_json(Path(out) / "summary.json", QuantizeSummary(**summary).dump())
    return summary


def _write_onnx(tmp: Path, loaded, method: str) -> dict:
    """model.onnx (fp32, or ORT's int8 made from the fp32 graph) and a model.json saying what
    the graph is: OnnxClassifier reads the head from it. Returns how the copy was made."""
    if method == "onnx":
        info = export_classifier(loaded.model, tmp / ONNX_FILE)
    else:
        fp32 = tmp / "fp32" / ONNX_FILE  # its own directory: its weights file must not clash
        fp32.parent.mkdir()
        info = export_classifier(loaded.model, fp32)  # max_abs_logit_diff: the fp32 graph's
        info["int8"] = quantize_int8(fp32, tmp / ONNX_FILE)
        shutil.rmtree(fp32.parent)
    meta = {"kind": loaded.kind, "model": loaded.config.model_dump(mode="json")}
    write_json(tmp / "model.json", {**meta, **loaded.model.artifact_meta(), "onnx": info})
    return info


def _evaluate_classifier(run: Path, src: Path) -> dict:
    """The source run's splits and speed protocol, on the quantized model (or the ONNX copy's
    ONNX Runtime session)."""
    cfg = read_settings(run)
    cfg.speed = True
    if (run / ONNX_FILE).is_file():
        model, tokenizer = OnnxClassifier.from_dir(run), Tokenizer.load(run)
    else:
        loaded = load(run)
        model, tokenizer = loaded.model, loaded.tokenizer
    out = score(model, tokenizer, run_task(run, cfg), cfg, run)
    if (src / "summary.json").is_file():  # the parameters are the source's (not re-counted)
        source = ClassifierSummary.read(src)
        counts = {"params_total": source.params_total, "params_trainable": source.params_trainable}
        out.update({k: v for k, v in counts.items() if v is not None})
    return out


def _evaluate_lm(run: Path, src: Path) -> dict:
    """Val loss and bits per byte of the quantized LM and of its source, in fp32 on the same
    held-out batches as pre-training (the source's own summary was measured under autocast),
    and the time each pass took."""
    recipe = read_yaml(src / "config.yaml")  # the source's pretrain or midtrain recipe
    data = validate(LMData, recipe.get("data", {}), f"{src}/config.yaml data")
    micro_batch = validate(
        TrainerConfig, recipe.get("trainer", {}), f"{src}/config.yaml"
    ).micro_batch_size
    shards = Path(data.shards) if data.shards else src / "shards"
    if not (shards / "val").is_dir():
        return {"eval_note": f"no held-out shards at {shards}: val bpb not measured"}
    val = ShardDataset(shards, "val")
    out = {}
    for name, path in (("", run), ("source_", src)):
        loaded = load(path)
        token_bytes = torch.tensor(token_byte_lengths(loaded.tokenizer), dtype=torch.long)
        batches = iter_eval_batches(val, micro_batch, data.seq_len, data.eval_batches)
        t0 = time.perf_counter()
        result = lm_eval(loaded.model.eval(), batches, token_bytes)
        out.update({name + k: v for k, v in result.items()})
        out[name + "eval_seconds"] = time.perf_counter() - t0
    out["val_bpb_change"] = out["val_bpb"] - out["source_val_bpb"]
    return out
