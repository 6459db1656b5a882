"""Supervised fine-tuning recipe: a decoder -> chat conversations -> an assistant.

    lmforge data instructions --out data/instructions
    lmforge sft --config configs/demo/sft.yaml

The next-token loss of pre-training, on ChatML conversations, counted on assistant tokens
only (data/chat.py), full or with LoRA. Evaluation on held-out conversations (about words
never seen in training): the loss, and the model's own greedy answers scored against the
reference by exact match and token F1, overall and per task, next to the starting model's.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Literal

import torch
from pydantic import Field

from lmforge.artifact import load, load_chat_decoder, save_causal_lm
from lmforge.config import Section
from lmforge.data.chat import (
    PackedChatBatches,
    encode_chat,
    load_conversation_records,
)
from lmforge.infer.generate import SamplingConfig, stream_chat
from lmforge.model.lora import LoraConfig
from lmforge.model.transformer import count_parameters
from lmforge.stages import frame
from lmforge.stages.summaries import SFTSummary
from lmforge.train import distributed as dp
from lmforge.train.objectives import clm_loss
from lmforge.train.trainer import Trainer, TrainerConfig, steps_for_epochs
from lmforge.utils import write_json


class ChatData(Section):
    train: str = "data/instructions/train.jsonl"
    val: str = "data/instructions/val.jsonl"
    seq_len: int = Field(256, ge=2)
    max_val: int = Field(
        200, ge=1
    )  # held-out conversations for the val loss and the answer metrics


class AnswerEval(Section):
    n: int = Field(100, ge=0)  # held-out conversations answered greedily at the end (0: skip)
    max_new_tokens: int = Field(64, ge=1)
    baseline: bool = True  # also answer them with the starting model, for the before/after


class SFTConfig(Section):
    out_dir: str = "runs/demo/sft"
    # A decoder: an lmforge causal LM run (pretrain, midtrain), an HF checkpoint, hf:<repo>.
    init: str = "runs/demo/pretrain"
    data: ChatData = Field(default_factory=ChatData)
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(
        default_factory=lambda: LoraConfig(
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
        )
    )
    epochs: float = Field(1.0, gt=0)  # sets trainer.max_steps from the number of packed rows
    answers: AnswerEval = Field(default_factory=AnswerEval)
    trainer: TrainerConfig = Field(
        default_factory=lambda: TrainerConfig(lr=3e-4, warmup_steps=20, eval_every=100)
    )


# --------------------------------------------------------------------------------------------
# Pieces shared by the post-training stages (SFT, reward, DPO)
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Answer metrics (SQuAD's normalisation)
# --------------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(c for c in text if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def answer_metrics(model, tokenizer, records: list[dict], max_new_tokens: int) -> dict:
    """Greedy answers to each record's last user turn, scored against its last assistant turn."""
    model.eval()
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0)
    rows, by_task = [], {}
    for r in records:
        prompt, reference = r["messages"][:-1], r["messages"][-1]["content"]
        answer = "".join(stream_chat(model, tokenizer, prompt, sampling)).strip()
        row = {
            "task": r.get("task", "all"),
            "user": prompt[-1]["content"],
            "reference": reference,
            "answer": answer,
            "exact_match": float(normalize(answer) == normalize(reference)),
            "token_f1": token_f1(answer, reference),
        }
        rows.append(row)
        by_task.setdefault(row["task"], []).append(row)

    def mean(rs, key):
        return sum(x[key] for x in rs) / max(1, len(rs))

    return {
        "n": len(rows),
        "exact_match": mean(rows, "exact_match"),
        "token_f1": mean(rows, "token_f1"),
        "by_task": {
            t: {
                "n": len(rs),
                "exact_match": mean(rs, "exact_match"),
                "token_f1": mean(rs, "token_f1"),
            }
            for t, rs in sorted(by_task.items())
        },
        "transcripts": rows,
    }


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def run(cfg: SFTConfig, overwrite: bool = False) -> dict:
    run_ = frame.begin(cfg)
    out = run_.out
    model, tokenizer = load_chat_decoder(cfg.init, cfg.method, cfg.lora)
    train = load_conversation_records(cfg.data.train)
    val = load_conversation_records(cfg.data.val)[: cfg.data.max_val]
    seq_len = min(cfg.data.seq_len, model.cfg.max_seq_len)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    encode = [encode_chat(tokenizer, r["messages"]) for r in train]
    # Under torchrun each rank takes its rows of the same global batches (train/distributed.py).
    par = dp.plan_for(cfg.trainer, cfg.trainer.micro_batch_size * seq_len)
    loader = par.shard(
        PackedChatBatches(
            encode, par.micro_batch_size * par.world_size, seq_len, pad, cfg.trainer.seed
        )
    )
    val_encoded = [encode_chat(tokenizer, r["messages"]) for r in val]
    if loader.truncated:
        print(f"[sft] {loader.truncated} conversations are longer than {seq_len} tokens: cut")
    cfg.trainer.max_steps, _ = steps_for_epochs(
        cfg.epochs,
        loader.rows_per_epoch(),
        cfg.trainer.micro_batch_size * cfg.trainer.grad_accum_steps,
        cfg.trainer,
        "sft",
    )
    params = count_parameters(model)
    trainable = params["trainable"]
    print(
        f"[sft] {cfg.method} from {cfg.init}: {trainable / 1e6:.2f}M of "
        f"{params['total'] / 1e6:.2f}M params trained; {len(train)} conversations in "
        f"{loader.rows_per_epoch()} rows of {seq_len}; {cfg.trainer.max_steps} steps"
    )

    def eval_fn(m):
        batches = PackedChatBatches(
            val_encoded, cfg.trainer.micro_batch_size, seq_len, pad, shuffle=False
        )
        nats, n = 0.0, 0
        with torch.no_grad():
            for batch in batches.batches():
                loss, _ = clm_loss(m, batch)
                k = int((batch["targets"] >= 0).sum())
                nats, n = nats + loss.item() * k, n + k
        return {"val_loss": nats / max(1, n)}

    # New, resumed or refused by what out_dir holds; nothing half-made is left on bad input.
    with run_.open(overwrite):
        baseline = None
        if cfg.answers.n and cfg.answers.baseline and par.is_main:
            start = load(cfg.init).model
            baseline = answer_metrics(
                start, tokenizer, val[: cfg.answers.n], cfg.answers.max_new_tokens
            )
            del start
        trainer = Trainer(
            cfg.trainer,
            model,
            clm_loss,
            loader,
            out,
            eval_fn=eval_fn,
            tokens_per_micro_batch=cfg.trainer.micro_batch_size * seq_len,
        )
    result = trainer.fit()
    if not par.is_main:
        return result  # rank 0 measures and writes the artifact

    model = trainer.model
    save_causal_lm(out, model, tokenizer, extra_meta={"post_training": "sft"})
    summary = {
        "stage": "sft",
        "init": cfg.init,
        "method": cfg.method,
        **result,
        "params": params["total"],
        "params_trainable": trainable,
        "train_conversations": len(train),
        "val_conversations": len(val),
        "truncated_conversations": loader.truncated,
    }
    if cfg.answers.n:
        answers = answer_metrics(model, tokenizer, val[: cfg.answers.n], cfg.answers.max_new_tokens)
        write_json(out / "answers.json", {"after": answers, "before": baseline})
        summary["answers"] = {k: v for k, v in answers.items() if k != "transcripts"}
        summary["samples"] = answers["transcripts"][:8]
        if baseline:
            summary["answers_before"] = {k: v for k, v in baseline.items() if k != "transcripts"}
    return run_.finish(SFTSummary(**summary), plot=f"SFT ({cfg.method})")
