"""The training verbs: each runs a recipe (stages/) from a YAML config plus overrides."""

from __future__ import annotations

from textwrap import dedent

from lmforge.stages.summaries import (
    BaselineSummary,
    ClassifySummary,
    DPOSummary,
    MidtrainSummary,
    PretrainSummary,
    RewardSummary,
    SFTSummary,
)
from lmforge.utils import LazyModule, Ref
from lmforge.verbs.options import Call, Options, Verb, opt

# Imported when a verb runs (utils.LazyModule): the registry alone imports no recipe.
sweeps = LazyModule("lmforge.sweeps")
baseline = LazyModule("lmforge.stages.baseline")
classify = LazyModule("lmforge.stages.classify")
midtrain = LazyModule("lmforge.stages.midtrain")
preference = LazyModule("lmforge.stages.preference")
pretrain = LazyModule("lmforge.stages.pretrain")
sft = LazyModule("lmforge.stages.sft")

CLASSIFY_HELP = dedent("""\
    Train a classification head (and the backbone, or LoRA adapters) on a task, then
    evaluate on val and test: accuracy, macro F1 over every label, zero-F1 classes,
    per-tier macro F1 (head / mid / tail / rare by train frequency), ECE before and
    after temperature scaling, per-slice metrics, hardest examples, speed and size.
      lmforge classify train --config configs/demo/classify-decoder-lora.yaml
      lmforge classify train --config configs/demo/classify-decoder-lora.yaml lora.r=8 epochs=1
    Methods: method=probe (frozen backbone), method=full, method=lora (lora.r, lora.alpha,
    lora.dropout, lora.target_modules). Imbalance: class_weights=sqrt_inverse|balanced,
    label_smoothing=0.1, trainer.early_stop.patience=3 (on val macro F1, best restored).
    """)


def _recipe(run: Ref):
    """A verb's run from a recipe's ``run(cfg, overwrite)``."""
    return lambda call: run.get()(call.cfg, overwrite=call.overwrite)


class TfidfOptions(Options):
    task: str | None = opt(
        None, "task directory or raw labelled data (sets task.path)", sets="task.path"
    )
    out: str | None = opt(None, "output directory (sets out_dir)", sets="out_dir")


class GridOptions(Options):
    temperatures: list[float] = opt([1.0, 2.0, 4.0])
    alphas: list[float] = opt([0.5, 0.7, 0.9])


def distill_grid(call: Call) -> str:
    rows = sweeps.distill_grid(call.cfg, call.opts.temperatures, call.opts.alphas)
    lines = [
        "| T | alpha | macro F1 | tail F1 | rare F1 | ECE | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['temperature']:g} | {r['alpha']:g} | {r['macro_f1']:.3f} | {r['tail_f1']:.3f} "
            f"| {r['rare_f1']:.3f} | {r['ece']:.3f} | {r['accuracy']:.3f} |"
        )
    return "\n".join(lines)


def scaling_sweep(call: Call) -> list[dict]:
    keys = ("run", "params", "tokens", "flops", "val_loss")
    return [{k: r[k] for k in keys} for r in sweeps.sweep(call.cfg)]


VERBS = [
    Verb(
        "pretrain",
        "pre-train a decoder on next-token prediction",
        _recipe(pretrain.ref("run")),
        dedent("""\
            Pre-train a decoder (RoPE, RMSNorm, SwiGLU, GQA) on next-token prediction: tokenize the
            corpus into shards, train with AdamW + warmup/cosine, evaluate val loss and bits per byte,
            checkpoint, and write the artifact (model.safetensors, model.json, tokenizer.json,
            config.yaml, metrics.jsonl, loss.png, samples.jsonl, summary.json) to out_dir.
            Re-running the same command resumes from the newest checkpoint.

            examples:
              lmforge pretrain --config configs/demo/pretrain.yaml
              lmforge pretrain --config configs/demo/pretrain.yaml trainer.max_steps=50 model.n_layer=2
              lmforge pretrain --config configs/demo/pretrain.yaml data.path=my_texts/ out_dir=runs/mine

            data-parallel on 2 processes or GPUs (also midtrain, sft, classify train); the batch
            in the config is the global one, so the loss curve is the same:
              torchrun --nproc-per-node 2 -m lmforge pretrain --config configs/demo/pretrain.yaml trainer.parallel=fsdp
            """),
        config=pretrain.ref("PretrainConfig"),
        default_config="configs/demo/pretrain.yaml",
        summary=PretrainSummary,
        trains=True,
        data_parallel=True,
        output="out_dir",
        inputs=("tokenizer", "data.path", "init"),
    ),
    Verb(
        "midtrain",
        "continue a decoder's training on a new data diet and/or a longer context",
        _recipe(midtrain.ref("run")),
        dedent("""\
            Start from a trained decoder and train on a new diet (mixture=DIR from `lmforge data
            mix`) and/or at a longer context (context.seq_len, progressively with
            context.schedule, with a RoPE adjustment: context.rope_theta, context.rope_scaling
            linear|ntk|llama3). Reports val loss per domain and on the starting model's own
            held-out data before and after (what was forgotten), and the loss at each position
            of long held-out documents before and after (loss_by_position.png).
              lmforge midtrain --config configs/demo/midtrain-context.yaml
              lmforge midtrain --config configs/demo/midtrain-context.yaml context.rope_scaling=linear
            """),
        config=midtrain.ref("MidtrainConfig"),
        default_config="configs/demo/midtrain-context.yaml",
        summary=MidtrainSummary,
        trains=True,
        data_parallel=True,
        output="out_dir",
        inputs=("init", "mixture"),
    ),
    Verb(
        "sft",
        "supervised fine-tuning on chat conversations (assistant-only loss)",
        _recipe(sft.ref("run")),
        dedent("""\
            Fine-tune a decoder on ChatML conversations, the loss on assistant tokens and their
            <|im_end|> only, full or LoRA (method=lora, merged into the saved model). Evaluates
            the val loss and greedy answers to held-out questions (exact match, token F1, per
            task) before and after; writes a causal-LM artifact that chat / serve / dpo read.
              lmforge data instructions --out data/instructions
              lmforge sft --config configs/demo/sft.yaml
              lmforge sft --config configs/demo/sft.yaml method=lora init=hf:Qwen/Qwen2.5-0.5B
            """),
        config=sft.ref("SFTConfig"),
        default_config="configs/demo/sft.yaml",
        summary=SFTSummary,
        trains=True,
        data_parallel=True,
        output="out_dir",
        inputs=("init", "data.train", "data.val"),
    ),
    Verb(
        "reward",
        "train a reward model on preference pairs (Bradley-Terry)",
        _recipe(preference.ref("train_reward")),
        dedent("""\
            A decoder's body plus a scalar head on the answer's last token, trained with
            -log sigmoid(r_chosen - r_rejected); reports held-out accuracy and margin.
              lmforge reward --config configs/demo/reward.yaml
            """),
        config=preference.ref("RewardConfig"),
        default_config="configs/demo/reward.yaml",
        summary=RewardSummary,
        trains=True,
        output="out_dir",
        inputs=("init",),
    ),
    Verb(
        "dpo",
        "direct preference optimisation from an SFT model",
        _recipe(preference.ref("train_dpo")),
        dedent("""\
            DPO's sigmoid loss (beta 0.1) on summed answer log-probabilities against a frozen
            reference (LoRA: the same model with adapters off). Reports reward accuracy, chosen
            and rejected rewards and margins, and the win rate over the starting model judged
            by a reward model (win_rate.reward_model).
              lmforge dpo --config configs/demo/dpo.yaml
            """),
        config=preference.ref("DPOConfig"),
        default_config="configs/demo/dpo.yaml",
        summary=DPOSummary,
        trains=True,
        output="out_dir",
        inputs=("init", "win_rate.reward_model"),
    ),
    Verb(
        "classify train",
        "train a classifier from a recipe",
        _recipe(classify.ref("train")),
        CLASSIFY_HELP,
        config=classify.ref("ClassifyConfig"),
        summary=ClassifySummary,
        trains=True,
        data_parallel=True,
        output="out_dir",
        inputs=("init", "task.path"),
    ),
    Verb(
        "distill train",
        "train a student (classify train + distill.*)",
        _recipe(classify.ref("train")),
        CLASSIFY_HELP,
        config=classify.ref("ClassifyConfig"),
        summary=ClassifySummary,
        trains=True,
        output="out_dir",
        inputs=("init", "task.path", "distill.teacher_logits"),
    ),
    Verb(
        "distill grid",
        "one student per temperature x alpha, one table",
        distill_grid,
        options=GridOptions,
        config=classify.ref("ClassifyConfig"),
        output="out_dir",
    ),
    Verb(
        "baseline tfidf",
        "TF-IDF (50k features, 1-2-grams, sublinear tf) + logistic regression",
        lambda call: baseline.run(call.cfg),
        dedent("""\
            Fit TF-IDF + logistic regression on a task's train split and score it on val and test
            with the same metrics, tiers, calibration and speed protocol as every classifier.
              lmforge baseline tfidf --task data/wordnet-task --out runs/demo/tfidf
              lmforge baseline tfidf --task data/wordnet-task --out runs/t C=4 max_features=20000
            Writes summary.json, eval/<split>/{metrics.json,per_class.csv,confusion.png,...}
            and the model (tfidf.json + tfidf.safetensors, no pickles).
            """),
        options=TfidfOptions,
        config=baseline.ref("TfidfConfig"),
        summary=BaselineSummary,
        output="out_dir",
        inputs=("task.path",),
    ),
    Verb(
        "scaling sweep",
        "pre-training runs: model sizes x token counts, or x FLOP budgets (resumable)",
        scaling_sweep,
        dedent("""\
            Pre-train each lmforge-d<depth> preset at each token count (`tokens:`, a grid for
            Chinchilla's approach 3) or at each FLOP budget (`budgets:`, IsoFLOP curves for
            approach 2; steps sized with 6N + attention FLOPs per token). Each run has its own
            warmup + cosine schedule; finished runs are skipped, an interrupted one resumes.
              lmforge scaling sweep --config configs/demo/scaling.yaml           # the grid
              lmforge scaling sweep --config configs/demo/scaling-isoflop.yaml   # IsoFLOP
            """),
        config=sweeps.ref("SweepConfig"),
        default_config="configs/demo/scaling.yaml",
        output="out_dir",
        inputs=("base",),
    ),
]
