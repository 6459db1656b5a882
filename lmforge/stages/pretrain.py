"""Pre-training recipe: corpus -> token shards -> decoder -> next-token prediction -> artifact.

lmforge pretrain --config configs/demo/pretrain.yaml trainer.max_steps=50 model.n_layer=2
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from lmforge.artifact import Loaded, load, load_causal_lm, save_model_artifact
from lmforge.config import Section
from lmforge.data.shards import (
    LMData,
    PackedLoader,
    ShardDataset,
    ensure_shards,
    iter_eval_batches,
)
from lmforge.errors import ConfigError
from lmforge.infer.generate import SampleConfig, write_samples
from lmforge.model.config import ModelConfig, from_preset
from lmforge.model.heads import MaskedLM
from lmforge.model.transformer import LanguageModel, count_parameters
from lmforge.stages import frame
from lmforge.stages.summaries import PretrainSummary
from lmforge.tokenizer import Tokenizer, token_byte_lengths
from lmforge.train import distributed as dp
from lmforge.train.objectives import (
    clm_loss,
    lm_distillation_loss_fn,
    lm_eval,
    mlm_eval,
    mlm_loss_fn,
)
from lmforge.train.trainer import Trainer, TrainerConfig


class LMDistillConfig(Section):
    # A trained causal LM with the same tokenizer; each step it scores the same batch and the
    # student also learns its per-token distribution (forward KL, teacher -> student).
    teacher: str | None = None
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the KL term; 1 - alpha on next-token CE


class PretrainConfig(Section):
    out_dir: str = "runs/demo/pretrain"
    tokenizer: str = "runs/demo/tokenizer"
    # clm: next-token prediction (a decoder); mlm: masked tokens (an encoder, model.causal=false).
    objective: Literal["clm", "mlm"] = "clm"
    mlm_rate: float = Field(0.3, gt=0, lt=1)  # ModernBERT masks 30% (BERT 15%), 80/10/10
    # A preset name (lmforge-d6, ...) fills `model`; keys under `model` override the preset.
    preset: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    # Start from an earlier artifact's weights instead of a random init (mid-training).
    init: str | None = None
    data: LMData = Field(default_factory=LMData)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    samples: SampleConfig = Field(default_factory=SampleConfig)
    distill: LMDistillConfig = Field(default_factory=LMDistillConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        # The preset fills `model`; keys the user sets under `model` win over it.
        if isinstance(data, dict) and data.get("preset"):
            model = data.get("model") or {}
            if not isinstance(model, dict):
                model = model.model_dump()
            data = {**data, "model": {**from_preset(data["preset"]).model_dump(), **model}}
        return data


def check_inputs(cfg: PretrainConfig) -> None:
    """Fail on bad input before anything is written."""
    dp.plan_for(cfg.trainer, cfg.trainer.micro_batch_size * cfg.data.seq_len)  # batch vs ranks
    if not Path(cfg.tokenizer).exists():
        raise ConfigError(
            f"tokenizer '{cfg.tokenizer}' does not exist. Train one first: "
            f"lmforge tokenizer train --data {cfg.data.path} --out {cfg.tokenizer}"
        )
    if cfg.data.shards is None and not Path(cfg.data.path).exists():
        raise ConfigError(
            f"data.path '{cfg.data.path}' does not exist. Build the default corpus with "
            f"`lmforge data build --out {cfg.data.path}` or point data.path at your own text."
        )
    if cfg.objective == "mlm" and cfg.model.causal and cfg.init is None:
        raise ConfigError(
            "objective mlm trains an encoder: set model.causal=false (see configs/demo/encoder.yaml)"
        )
    if cfg.distill.teacher:
        check_teacher(cfg)
    if cfg.init is None and cfg.data.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"data.seq_len ({cfg.data.seq_len}) exceeds model.max_seq_len ({cfg.model.max_seq_len}); "
            "lower data.seq_len or raise model.max_seq_len"
        )


def check_teacher(cfg: PretrainConfig) -> None:
    if cfg.objective != "clm":
        raise ConfigError("distill.teacher distils a causal LM: it needs objective clm")
    if not (Path(cfg.distill.teacher) / "tokenizer.json").is_file():
        raise ConfigError(f"distill.teacher {cfg.distill.teacher} is not a trained LM directory")
    theirs = Tokenizer.load(cfg.distill.teacher).hf.get_vocab()
    if theirs != Tokenizer.load(cfg.tokenizer).hf.get_vocab():
        raise ConfigError(
            f"distill.teacher {cfg.distill.teacher} uses another tokenizer than {cfg.tokenizer}; "
            "per-token distillation needs the same vocabulary (train the student with the "
            "teacher's tokenizer)"
        )


def model_config_for(cfg: PretrainConfig, tokenizer: Tokenizer) -> ModelConfig:
    """The recipe's model, with the vocabulary and special tokens the tokenizer dictates."""
    return cfg.model.model_copy(
        update=dict(
            vocab_size=tokenizer.vocab_size,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
    )


def resolve_model(cfg: PretrainConfig) -> tuple[Tokenizer, Loaded | None]:
    """The tokenizer, the init artifact if any, and cfg.model set to the model this run trains
    (the recipe's, with the tokenizer's vocabulary) - all checked, nothing written."""
    tokenizer = Tokenizer.load(cfg.tokenizer)
    init = load(cfg.init) if cfg.init else None
    mcfg = init.config if init else model_config_for(cfg, tokenizer)
    if init and mcfg.vocab_size != tokenizer.vocab_size:
        raise ConfigError(
            f"init model {cfg.init} has vocab {mcfg.vocab_size} but the tokenizer has {tokenizer.vocab_size}"
        )
    if cfg.objective == "mlm" and tokenizer.mask_id is None:
        raise ConfigError(
            f"tokenizer {cfg.tokenizer} has no <|mask|> token; retrain it with lmforge"
        )
    cfg.model = mcfg
    return tokenizer, init


def prepare(cfg: PretrainConfig, out: Path, tokenizer: Tokenizer, init: Loaded | None):
    """Token shards, model and loader - everything before training."""
    with dp.main_first():  # under torchrun rank 0 tokenizes; the others then read its shards
        shards_dir = ensure_shards(cfg.data, tokenizer, out, cfg.trainer.seed)
    train_ds, val_ds = ShardDataset(shards_dir, "train"), ShardDataset(shards_dir, "val")
    par = dp.plan_for(cfg.trainer, cfg.trainer.micro_batch_size * cfg.data.seq_len)
    loader = PackedLoader(
        train_ds,
        par.micro_batch_size,
        cfg.data.seq_len,
        seed=cfg.trainer.seed,
        bos_id=tokenizer.bos_id,
        rank=par.rank,
        world_size=par.world_size,
    )
    if init:
        model = init.model
    else:
        model = MaskedLM(cfg.model) if cfg.objective == "mlm" else LanguageModel(cfg.model)
    return model, train_ds, val_ds, loader


@torch.no_grad()
def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> dict:
    """An encoder's top guesses for each <|mask|> in text."""
    model.eval()
    ids = tokenizer.encode(text, add_bos=True, add_eos=True, allow_special=True)
    logits = model(torch.tensor([ids]))[0]
    guesses = []
    for pos, t in enumerate(ids):
        if t == tokenizer.mask_id:
            top = logits[pos].float().topk(top_k).indices.tolist()
            guesses.append([tokenizer.decode([i]) for i in top])
    return {"prompt": text, "guesses": guesses}


def lm_distillation(cfg: PretrainConfig, tokenizer: Tokenizer, val_ds, token_bytes, eval_fn):
    """The per-token distillation loss from cfg.distill.teacher, and the teacher's own val
    numbers for the summary. The teacher must speak the student's tokenizer."""
    teacher = load_causal_lm(cfg.distill.teacher, purpose="distill.teacher")
    model = teacher.model.eval().requires_grad_(False)
    scored = eval_fn(model)
    info = {
        "distill": {
            **cfg.distill.model_dump(),
            "teacher_val_loss": scored.get("val_loss"),
            "teacher_val_bpb": scored.get("val_bpb"),
            "teacher_params": count_parameters(model)["total"],
        }
    }
    return lm_distillation_loss_fn(model, cfg.distill.temperature, cfg.distill.alpha), info


def run(cfg: PretrainConfig, overwrite: bool = False) -> dict:
    check_inputs(cfg)
    run_ = frame.begin(cfg)
    tokenizer, init = resolve_model(cfg)  # fills in cfg.model: the config in force
    out = run_.out
    with run_.open(overwrite):
        model, train_ds, val_ds, loader = prepare(cfg, out, tokenizer, init)
        mcfg = cfg.model
        params = count_parameters(model)
        print(
            f"[pretrain] {mcfg.name or 'model'}: {params['total'] / 1e6:.1f}M params "
            f"({params['non_embedding'] / 1e6:.1f}M non-embedding), "
            f"{mcfg.flops_per_token(cfg.data.seq_len) / 1e6:.0f} MFLOPs/token; "
            f"data: {train_ds.num_tokens / 1e6:.1f}M train tokens, {val_ds.num_tokens / 1e3:.0f}K val tokens"
        )
        token_bytes = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.long)

        def eval_fn(m):
            batches = iter_eval_batches(
                val_ds, cfg.trainer.micro_batch_size, cfg.data.seq_len, cfg.data.eval_batches
            )
            if cfg.objective == "mlm":
                return mlm_eval(m, batches, *mlm_args)
            return lm_eval(m, batches, token_bytes)

        loss_fn = clm_loss
        if cfg.objective == "mlm":
            specials = sorted(tokenizer.special_ids)
            mlm_args = (tokenizer.mask_id, mcfg.vocab_size, specials, cfg.mlm_rate)
            loss_fn = mlm_loss_fn(*mlm_args)

        teacher_info = {}
        if cfg.distill.teacher:
            loss_fn, teacher_info = lm_distillation(cfg, tokenizer, val_ds, token_bytes, eval_fn)

        trainer = Trainer(
            cfg.trainer,
            model,
            loss_fn,
            loader,
            out,
            eval_fn=eval_fn,
            tokens_per_micro_batch=cfg.trainer.micro_batch_size * cfg.data.seq_len,
            flops_per_token=mcfg.flops_per_token(cfg.data.seq_len),
        )
    result = trainer.fit()  # resumes from the run's checkpoints when it was interrupted
    if not trainer.par.is_main:
        return result  # rank 0 writes the artifact

    # The artifact: weights, config, tokenizer, samples; then the summary (it marks completion).
    model = trainer.model.float()
    save_model_artifact(out, model, kind="masked_lm" if cfg.objective == "mlm" else "causal_lm")
    tokenizer.save(out)
    if cfg.objective == "mlm":
        samples = [fill_mask(model, tokenizer, p) for p in cfg.samples.prompts if "<|mask|>" in p]
    else:
        samples = write_samples(model, tokenizer, cfg.samples)
    (out / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    summary = PretrainSummary(
        stage="pretrain",
        **result,
        params=params["total"],
        params_non_embedding=params["non_embedding"],
        flops_per_token=mcfg.flops_per_token(cfg.data.seq_len),
        train_tokens_available=train_ds.num_tokens,
        epochs=result["tokens_seen"] / max(1, train_ds.num_tokens),
        samples=samples,
        **teacher_info,
    )
    title = f"pretrain {mcfg.name or ''} ({params['total'] / 1e6:.1f}M params)"
    return run_.finish(summary, plot=title)
