"""Mid-training recipe: a pre-trained decoder -> a new data diet and/or a longer context.

    lmforge midtrain --config configs/demo/midtrain-context.yaml   # 256 -> 1024 tokens
    lmforge midtrain --config configs/demo/midtrain-code.yaml      # shift the diet (a mixture)

The loss is pre-training's; what changes is the data and the context:

- Diet: `mixture` names a directory from `lmforge data mix` (weighted sources, a schedule);
  the trainer logs the realised mix, and each source's val loss is reported before and after
  (`val_bpb_<source>`), next to the val loss on the starting model's own held-out data
  (`val_bpb_init`: what was forgotten).
- Context: `context.seq_len` raises the sequence length, optionally in steps
  (`context.schedule: [[0, 512], [0.5, 1024]]`: from half-way on, 1024), with a RoPE
  adjustment: a new base (`rope_theta`, as Llama 3 and Code Llama raise it), position
  interpolation (`rope_scaling: linear`, Chen et al. 2023: positions divided by the factor),
  NTK-aware base scaling (`ntk`) or Llama 3.1's per-frequency blend (`llama3`). Measured: the
  loss at each position of held-out documents longer than the old context, before and after.

The optimizer starts fresh (a mid-training run has its own warmup and schedule); the starting
model's weights are all that is carried over.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from lmforge.artifact import load_causal_lm, save_model_artifact
from lmforge.config import Section
from lmforge.data.mixture import MixtureLoader
from lmforge.data.shards import LMData, PackedLoader, ShardDataset, ensure_shards, iter_eval_batches
from lmforge.errors import ConfigError
from lmforge.infer.generate import SampleConfig, write_samples
from lmforge.model.transformer import LanguageModel, count_parameters
from lmforge.stages import frame
from lmforge.stages.summaries import MidtrainSummary
from lmforge.tokenizer import Tokenizer, token_byte_lengths
from lmforge.train import distributed as dp
from lmforge.train.objectives import clm_loss, lm_eval
from lmforge.train.trainer import Trainer, TrainerConfig


class ContextSection(Section):
    seq_len: int | None = Field(None, ge=2)  # the new context; None keeps the starting model's
    # Progressive extension: [fraction of training, seq_len] steps; tokens per batch stay the
    # same (shorter rows, more of them). Empty: seq_len from the start.
    schedule: list[tuple[float, int]] = []
    rope_theta: float | None = Field(None, gt=0)  # a new RoPE base
    rope_scaling: Literal["none", "linear", "ntk", "llama3"] = "none"
    rope_scaling_factor: float | None = Field(None, gt=0)  # None: new length / old length
    # Loss-by-position buckets (token positions); the last bound is the new context.
    buckets: list[int] = [0, 64, 128, 256, 512, 1024]
    max_eval_docs: int = Field(64, ge=1)  # held-out documents at least as long as the new context
    # Loss by position up to this length (None: the new context). Set it on a run that keeps
    # the old context (the "just train longer" baseline) to measure it the same way.
    eval_len: int | None = Field(None, ge=2)


class MidtrainConfig(Section):
    out_dir: str = "runs/demo/midtrain"
    init: str = "runs/demo/pretrain"  # a causal LM; its tokenizer comes with it
    # The new diet: a `lmforge data mix` directory, or (None) the documents under data.path.
    mixture: str | None = None
    data: LMData = Field(default_factory=LMData)
    context: ContextSection = Field(default_factory=ContextSection)
    trainer: TrainerConfig = Field(
        default_factory=lambda: TrainerConfig(max_steps=300, lr=1e-3, warmup_steps=30)
    )
    samples: SampleConfig = Field(default_factory=SampleConfig)


# --------------------------------------------------------------------------------------------
# Context: the new model config and the loaders
# --------------------------------------------------------------------------------------------


def extended_config(old, ctx: ContextSection):
    """The starting model's config with the new context and RoPE settings."""
    new_len = ctx.seq_len or old.max_seq_len
    if new_len < old.max_seq_len:
        raise ConfigError(
            f"context.seq_len {new_len} is below the starting model's context "
            f"{old.max_seq_len}; mid-training extends a context, it never shrinks one"
        )
    if old.pos_embedding != "rope" and new_len > old.max_seq_len:
        raise ConfigError("only RoPE models can extend their context (learned positions end)")
    update = {"max_seq_len": new_len, "rope_scaling": ctx.rope_scaling}
    if ctx.rope_theta:
        update["rope_theta"] = ctx.rope_theta
    if ctx.rope_scaling != "none":
        update["rope_scaling_factor"] = ctx.rope_scaling_factor or new_len / old.max_seq_len
        update["rope_original_max_len"] = old.max_seq_len
    return old.model_copy(update=update)


class ProgressiveLoader:
    """One loader per context phase, switched by the number of batches drawn, so resuming
    lands in the right phase. Batch size grows as rows shorten: tokens per batch stay fixed."""

    def __init__(
        self,
        make_loader,
        phases: list[tuple[float, int]],
        total_batches: int,
        tokens_per_batch: int,
    ):
        self.starts = [round(f * total_batches) for f, _ in phases]
        self.loaders = [make_loader(max(1, tokens_per_batch // n), n) for _, n in phases]
        self.seq_lens = [n for _, n in phases]
        self.drawn = 0

    def phase(self) -> int:
        return max(i for i, s in enumerate(self.starts) if s <= self.drawn)

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = self.loaders[self.phase()].next_batch()
        self.drawn += 1
        return batch

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "loaders": [ld.state_dict() for ld in self.loaders]}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = state["drawn"]
        for ld, st in zip(self.loaders, state["loaders"], strict=True):
            ld.load_state_dict(st)


def phases_for(ctx: ContextSection, seq_len: int) -> list[tuple[float, int]]:
    phases = [tuple(p) for p in ctx.schedule] or [(0.0, seq_len)]
    if phases[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(phases, phases[1:])):
        raise ConfigError(
            "context.schedule must start at fraction 0 and increase, e.g. [[0, 512], [0.5, 1024]]"
        )
    if max(n for _, n in phases) > seq_len:
        raise ConfigError(f"context.schedule goes beyond context.seq_len {seq_len}")
    return phases


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def loss_by_position(
    model, datasets: list[ShardDataset], length: int, max_docs: int, batch_size: int = 4
) -> tuple[np.ndarray, int]:
    """Mean next-token loss at each position 0..length-1 over held-out documents of at least
    length + 1 tokens (each read from its start, so position means position in the document)."""
    model.eval()
    docs = [(ds, i) for ds in datasets for i in np.flatnonzero(ds.doc_len >= length + 1)]
    docs = docs[:max_docs]
    if not docs:
        return np.array([]), 0
    total = torch.zeros(length, dtype=torch.float64)
    for k in range(0, len(docs), batch_size):
        rows = [
            torch.from_numpy(ds.tokens(int(i), 0, length + 1).astype(np.int64))
            for ds, i in docs[k : k + batch_size]
        ]
        x = torch.stack(rows)
        logits = model(x[:, :-1]).float()
        loss = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        total += loss.sum(0).double()
    return (total / len(docs)).numpy(), len(docs)


def bucket_means(per_position: np.ndarray, buckets: list[int]) -> dict[str, float]:
    out = {}
    for lo, hi in zip(buckets, buckets[1:]):
        part = per_position[lo:hi]
        if len(part):
            out[f"{lo}-{hi - 1}"] = float(part.mean())
    return out


def plot_positions(curves: dict[str, np.ndarray], old_len: int, path: Path) -> None:
    import matplotlib  # a second to import: only a run that draws pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        window = max(1, len(curve) // 64)  # smooth: single positions are noisy
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window // 2, smooth, label=name)
    ax.axvline(old_len, color="k", ls="--", lw=1, label=f"old context ({old_len})")
    ax.set_xlabel("token position in the document")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title("loss by position on held-out long documents")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def run(cfg: MidtrainConfig, overwrite: bool = False) -> dict:
    run_ = frame.begin(cfg)
    out = run_.out
    start = load_causal_lm(cfg.init, purpose="mid-training")
    tokenizer: Tokenizer = start.tokenizer
    old = start.config
    mcfg = extended_config(old, cfg.context)
    seq_len = mcfg.max_seq_len if cfg.context.seq_len else cfg.data.seq_len
    phases = phases_for(cfg.context, seq_len)
    if cfg.mixture and len(phases) > 1:
        raise ConfigError(
            "a mixture and a progressive context schedule together are not supported; run two midtrain stages"
        )

    # The model: the starting weights under the new positions (RoPE buffers are recomputed).
    model = LanguageModel(mcfg)
    model.load_state_dict(start.model.state_dict())
    before_model = LanguageModel(old.model_copy(update={"max_seq_len": mcfg.max_seq_len}))
    before_model.load_state_dict(start.model.state_dict())  # the old positions, run longer
    del start

    # New, resumed or refused by what out_dir holds; nothing half-made is left on bad input.
    with run_.open(overwrite):
        # Data: the new diet's loaders and val sets, and the starting model's own val data.
        # This rank's micro-batches (all of them in one process), as the trainer will take them,
        # so that the schedules land right.
        par = dp.plan_for(cfg.trainer, cfg.trainer.micro_batch_size * seq_len)
        tokens_per_batch = par.micro_batch_size * seq_len
        total_batches = cfg.trainer.max_steps * par.grad_accum_steps
        if cfg.mixture:
            mix = MixtureLoader(
                cfg.mixture,
                par.micro_batch_size,
                seq_len,
                total_batches,
                seed=cfg.trainer.seed,
                bos_id=tokenizer.bos_id,
                rank=par.rank,
                world_size=par.world_size,
            )
            loader, domains = mix, mix.val_datasets()
        else:
            with dp.main_first():
                shards = ensure_shards(cfg.data, tokenizer, out, cfg.trainer.seed)
            train_ds = ShardDataset(shards, "train")
            loader = ProgressiveLoader(
                lambda bs, n: PackedLoader(
                    train_ds,
                    bs,
                    n,
                    seed=cfg.trainer.seed,
                    bos_id=tokenizer.bos_id,
                    rank=par.rank,
                    world_size=par.world_size,
                ),
                phases,
                total_batches,
                tokens_per_batch,
            )
            domains = {"data": ShardDataset(shards, "val")}
        general = None
        init_shards = Path(cfg.init) / "shards"
        if (init_shards / "val").is_dir():
            general = ShardDataset(init_shards, "val")
        token_bytes = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.long)
        val_len = min(old.max_seq_len, cfg.data.seq_len)  # before/after on identical batches

        def eval_fn(m) -> dict:
            result = {}
            sets = ({"init": general} if general else {}) | domains
            for name, ds in sets.items():
                batches = iter_eval_batches(
                    ds, cfg.trainer.micro_batch_size, val_len, cfg.data.eval_batches
                )
                r = lm_eval(m, batches, token_bytes)
                result[f"val_bpb_{name}"] = r.get("val_bpb", math.nan)
                result[f"val_loss_{name}"] = r["val_loss"]
            first = "init" if general else next(iter(domains))
            result["val_loss"], result["val_bpb"] = (
                result[f"val_loss_{first}"],
                result[f"val_bpb_{first}"],
            )
            return result

        # held-out documents for loss by position, each split once (the diet may be the old data)
        long_sets = {}
        for ds in ([general] if general else []) + list(domains.values()):
            long_sets.setdefault((str(Path(ds.path).resolve()), ds.split), ds)
        long_sets = list(long_sets.values())
        # The starting model's numbers, measured once (rank 0) while the others wait for it.
        before = eval_fn(before_model) if par.is_main else {}
        curves = {}
        pos_len = cfg.context.eval_len or mcfg.max_seq_len
        if pos_len > old.max_seq_len and par.is_main:
            curves["before"], n_docs = loss_by_position(
                before_model, long_sets, pos_len, cfg.context.max_eval_docs
            )
            if n_docs == 0:
                print(
                    f"[midtrain] no held-out document has {pos_len + 1} tokens: loss by position not measured"
                )
        del before_model
        params = count_parameters(model)
        print(
            f"[midtrain] from {cfg.init}: context {old.max_seq_len} -> {mcfg.max_seq_len} "
            f"(rope {mcfg.rope_scaling}, theta {mcfg.rope_theta:g}); phases {phases}; "
            f"{'mixture ' + cfg.mixture if cfg.mixture else 'data ' + cfg.data.path}"
        )
        trainer = Trainer(
            cfg.trainer,
            model,
            clm_loss,
            loader,
            out,
            eval_fn=eval_fn,
            tokens_per_micro_batch=tokens_per_batch,
            flops_per_token=mcfg.flops_per_token(seq_len),
        )
    result = trainer.fit()
    if not par.is_main:
        return result  # rank 0 measures and writes the artifact
    model = trainer.model.float()
    after = eval_fn(model)

    save_model_artifact(out, model, kind="causal_lm", extra_meta={"midtrain": {"from": cfg.init}})
    tokenizer.save(out)
    summary = {
        "stage": "midtrain",
        "init": cfg.init,
        **result,
        "params": params["total"],
        "context": {
            "from": old.max_seq_len,
            "to": mcfg.max_seq_len,
            "phases": phases,
            "rope_scaling": mcfg.rope_scaling,
            "rope_theta": mcfg.rope_theta,
            "rope_scaling_factor": mcfg.rope_scaling_factor,
        },
        "before": before,
        "after": after,
        "forgetting_bpb": after.get("val_bpb_init", math.nan)
        - before.get("val_bpb_init", math.nan),
    }
    if hasattr(loader, "realised"):
        summary["realised_mix"] = loader.realised()
    if curves.get("before") is not None and len(curves["before"]):
        curves["after"], n_docs = loss_by_position(
            model, long_sets, pos_len, cfg.context.max_eval_docs
        )
        b = cfg.context.buckets
        summary["loss_by_position"] = {
            "documents": n_docs,
            "before": bucket_means(curves["before"], b),
            "after": bucket_means(curves["after"], b),
            "beyond_old_context": {
                k: float(v[old.max_seq_len :].mean()) for k, v in curves.items()
            },
        }
        plot_positions(curves, old.max_seq_len, out / "loss_by_position.png")
        np.save(out / "loss_by_position.npy", np.stack([curves["before"], curves["after"]]))
    summary["samples"] = write_samples(model, tokenizer, cfg.samples)
    return run_.finish(MidtrainSummary(**summary), plot="mid-training")
