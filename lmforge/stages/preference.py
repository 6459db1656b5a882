"""Preference recipes: a reward model, and DPO.

    lmforge reward --config configs/demo/reward.yaml   # SFT model + a scalar head on the last token
    lmforge dpo --config configs/demo/dpo.yaml         # SFT model -> preferred answers, no reward model

Both read preference pairs {"prompt", "chosen", "rejected"} (data/chat.py) and score an
answer as the tokens the chat template trains: its content and <|im_end|>.

Reward model (Bradley-Terry): r = a linear head on the hidden state of the answer's last
token; loss -log sigmoid(r_chosen - r_rejected); reported: accuracy (r_chosen > r_rejected)
and the mean margin on held-out pairs.

DPO (Rafailov et al. 2023): log-probabilities summed over the answer tokens under the policy
and a frozen reference (the starting model); loss -log sigmoid(beta * delta) with
delta = (logp_c - ref_c) - (logp_r - ref_r). With LoRA the reference is the same model with
its adapters switched off, so one model is in memory. Reported: the loss, reward accuracy,
chosen / rejected implicit rewards and margins on held-out pairs, how often the policy
itself prefers the chosen answer before and after, and the win rate of DPO's answers over
the starting model's on held-out prompts, judged by a reward model.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field

from lmforge.artifact import load, load_chat_decoder, save_causal_lm, save_model_artifact
from lmforge.config import Section
from lmforge.data.chat import PairBatches, encode_completion, load_preferences
from lmforge.errors import ConfigError
from lmforge.eval.metrics import mean_ci95
from lmforge.infer.generate import SamplingConfig, stream_chat
from lmforge.model.heads import HeadConfig, SequenceClassifier
from lmforge.model.lora import LoraConfig, apply_lora, lora_modules, unwrap_lora
from lmforge.model.transformer import count_parameters
from lmforge.stages import frame
from lmforge.stages.summaries import DPOSummary, RewardSummary
from lmforge.train.objectives import dpo_loss_fn, reward_loss, reward_loss_fn
from lmforge.train.trainer import Trainer, TrainerConfig, steps_for_epochs
from lmforge.utils import write_json


class PairData(Section):
    train: str = "data/instructions/preferences-train.jsonl"
    val: str = "data/instructions/preferences-val.jsonl"
    seq_len: int = Field(256, ge=2)
    max_train: int | None = Field(None, ge=1)  # the first N training pairs (None: all)
    max_val: int = Field(300, ge=1)


def _trainer_defaults(lr: float):
    return lambda: TrainerConfig(lr=lr, warmup_steps=10, eval_every=50, micro_batch_size=8)


class RewardConfig(Section):
    out_dir: str = "runs/demo/reward"
    init: str = "runs/demo/sft"  # a decoder; its body becomes the reward model's
    data: PairData = Field(default_factory=PairData)
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    epochs: float = Field(1.0, gt=0)
    trainer: TrainerConfig = Field(default_factory=_trainer_defaults(1e-4))


class WinRate(Section):
    reward_model: str | None = "runs/demo/reward"  # the judge; None skips the win rate
    n: int = Field(100, ge=0)  # held-out prompts
    max_new_tokens: int = Field(48, ge=1)


class DPOConfig(Section):
    out_dir: str = "runs/demo/dpo"
    init: str = "runs/demo/sft"  # the policy starts here; it is also the frozen reference
    data: PairData = Field(default_factory=PairData)
    beta: float = Field(0.1, gt=0)
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    epochs: float = Field(1.0, gt=0)
    win_rate: WinRate = Field(default_factory=WinRate)
    trainer: TrainerConfig = Field(default_factory=_trainer_defaults(5e-6))


def _pairs(cfg, tokenizer):
    bs, seq = cfg.trainer.micro_batch_size, cfg.data.seq_len
    pairs = load_preferences(cfg.data.train)[: cfg.data.max_train]
    train = PairBatches(tokenizer, pairs, bs, seq, cfg.trainer.seed)
    val_pairs = load_preferences(cfg.data.val)[: cfg.data.max_val]
    val = PairBatches(tokenizer, val_pairs, bs, seq, shuffle=False)
    if train.truncated:
        print(f"[{cfg.out_dir}] {train.truncated} training pairs were cut from the left to fit")
    return train, val, val_pairs


# --------------------------------------------------------------------------------------------
# Reward model
# --------------------------------------------------------------------------------------------


def reward_model_from(decoder) -> SequenceClassifier:
    """The decoder's body under a one-output linear head on the last non-pad token (as
    transformers' *ForSequenceClassification with num_labels=1)."""
    head = HeadConfig(num_labels=1, pooling="last", head="linear", bias=False)
    model = SequenceClassifier(decoder.cfg, head)
    model.model.load_state_dict(decoder.model.state_dict())
    return model


@torch.no_grad()
def reward_metrics(model, batches) -> dict:
    model.eval()
    chosen, rejected = [], []
    for batch in batches:
        r = model(batch["input_ids"])[:, 0].float()
        n = r.shape[0] // 2
        chosen.append(r[:n])
        rejected.append(r[n:])
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {
        "val_loss": reward_loss(c, r).item(),
        "val_accuracy": (c > r).float().mean().item(),
        "val_margin": (c - r).mean().item(),
    }


def _steps(cfg, pairs: int, stage: str) -> int:
    """`epochs` over the pairs, capped by a trainer.max_steps the user set."""
    t = cfg.trainer
    return steps_for_epochs(cfg.epochs, pairs, t.micro_batch_size * t.grad_accum_steps, t, stage)[0]


def train_reward(cfg: RewardConfig, overwrite: bool = False) -> dict:
    run_ = frame.begin(cfg)
    out = run_.out
    decoder, tokenizer = load_chat_decoder(cfg.init, "full", cfg.lora)
    model = reward_model_from(decoder)
    del decoder
    if cfg.method == "lora":
        apply_lora(model, cfg.lora, modules_to_save=["classifier"])
    train, val, _ = _pairs(cfg, tokenizer)
    cfg.trainer.max_steps = _steps(cfg, len(train.encoded), "reward")
    # New, resumed or refused by what out_dir holds; nothing half-made is left on bad input.
    with run_.open(overwrite):
        before = reward_metrics(model, val.batches())
        trainer = Trainer(
            cfg.trainer,
            model,
            reward_loss_fn(),
            train,
            out,
            eval_fn=lambda m: reward_metrics(m, val.batches()),
        )
    result = trainer.fit()
    model = trainer.model
    after = reward_metrics(model, val.batches())
    if cfg.method == "lora":
        unwrap_lora(model)
    save_model_artifact(
        out, model.float(), kind="sequence_classifier", extra_meta={"post_training": "reward"}
    )
    tokenizer.save(out)
    summary = {
        "stage": "reward",
        "init": cfg.init,
        "method": cfg.method,
        **result,
        "train_pairs": len(train.encoded),
        "val_pairs": len(val.encoded),
        "params": count_parameters(model)["total"],
        "before": before,
        **after,
    }
    return run_.finish(RewardSummary(**summary), plot=f"reward model ({cfg.method})")


def load_reward_model(path: str):
    loaded = load(path)
    if loaded.kind != "sequence_classifier" or loaded.meta.get("head", {}).get("num_labels") != 1:
        raise ConfigError(f"{path} is not a reward model (make one with `lmforge reward`)")
    return loaded.model.eval(), loaded.tokenizer


@torch.no_grad()
def win_rate(policy, baseline, tokenizer, judge, prompts, max_new_tokens: int) -> dict:
    """Greedy answers of both models to each prompt, scored by the judge (a reward model);
    a tie counts half. Returns the rate, its 95% bootstrap interval over prompts, and the
    answers."""

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0)
    rows, outcomes = [], []
    for prompt in prompts:
        answers = [
            "".join(stream_chat(m, tokenizer, prompt, sampling)).strip() or "."
            for m in (policy, baseline)
        ]
        scores = []
        for a in answers:
            ids, _ = encode_completion(tokenizer, prompt, a)
            ids = ids[-judge.cfg.max_seq_len :]
            scores.append(judge(torch.tensor([ids]))[0, 0].item())
        outcomes.append(1.0 if scores[0] > scores[1] else 0.5 if scores[0] == scores[1] else 0.0)
        rows.append(
            {
                "user": prompt[-1]["content"],
                "policy": answers[0],
                "baseline": answers[1],
                "policy_reward": scores[0],
                "baseline_reward": scores[1],
            }
        )
    return {
        "win_rate": sum(outcomes) / max(1, len(prompts)),
        "ci95": mean_ci95(outcomes),
        "n": len(prompts),
        "transcripts": rows,
    }


def train_dpo(cfg: DPOConfig, overwrite: bool = False) -> dict:
    run_ = frame.begin(cfg)
    out = run_.out
    model, tokenizer = load_chat_decoder(cfg.init, cfg.method, cfg.lora)
    # The reference: for LoRA the same weights with adapters off; for full training a frozen copy.
    reference = None
    if cfg.method == "full":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    elif not any(True for _ in lora_modules(model)):
        raise ConfigError("method lora found no layers to adapt")
    train, val, val_pairs = _pairs(cfg, tokenizer)
    cfg.trainer.max_steps = _steps(cfg, len(train.encoded), "dpo")
    # New, resumed or refused by what out_dir holds; nothing half-made is left on bad input.
    with run_.open(overwrite):
        loss_fn, metrics = dpo_loss_fn(reference, cfg.beta)
        before = metrics(model, val.batches())
        trainer = Trainer(
            cfg.trainer, model, loss_fn, train, out, eval_fn=lambda m: metrics(m, val.batches())
        )
    result = trainer.fit()
    model = trainer.model
    after = metrics(model, val.batches())
    summary = {
        "stage": "dpo",
        "init": cfg.init,
        "method": cfg.method,
        "beta": cfg.beta,
        **result,
        "train_pairs": len(train.encoded),
        "val_pairs": len(val.encoded),
        "before": before,
        **after,
    }
    save_causal_lm(out, model, tokenizer, extra_meta={"post_training": "dpo"})
    if cfg.win_rate.reward_model and cfg.win_rate.n:
        judge, _ = load_reward_model(cfg.win_rate.reward_model)
        start = reference if reference is not None else load(cfg.init).model
        prompts = [p.prompt for p in val_pairs[: cfg.win_rate.n]]
        wr = win_rate(model, start, tokenizer, judge, prompts, cfg.win_rate.max_new_tokens)
        write_json(out / "win_rate.json", wr)
        summary["win_rate_over_init"] = wr["win_rate"]
        summary["win_rate_ci95"] = wr["ci95"]
        summary["win_rate_n"] = wr["n"]
        summary["samples"] = wr["transcripts"][:8]
    return run_.finish(DPOSummary(**summary), plot=f"DPO (beta {cfg.beta}, {cfg.method})")
