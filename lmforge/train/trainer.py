"""THE training loop. Every stage (pretrain, midtrain, SFT, reward, DPO, classify, distill) uses it.

A stage provides a model, a batch source and a loss function; the trainer owns the rest:
AdamW, warmup + cosine/WSD/linear, gradient accumulation, clipping, bf16 autocast, optional
torch.compile, periodic eval, atomic checkpoints with exact resume, loss-spike rollback, a
progress bar, metrics.jsonl (and TensorBoard), and a loss-curve plot. Under torchrun the same
loop runs data-parallel (DDP or FSDP2, train/distributed.py): the configured batch is the
global one, rank 0 logs and writes, and checkpoints resume on any number of ranks.

Contracts:
  loader.next_batch() -> dict of tensors; loader.state_dict() / load_state_dict(state)
  loss_fn(model, batch) -> (loss, n_tokens)       # loss is the mean over the micro-batch
  eval_fn(model) -> dict[str, float]               # e.g. {"val_loss": ..., "val_bpb": ...}
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Protocol

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn
from tqdm.auto import tqdm

from lmforge.config import Section
from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.transformer import set_activation_checkpointing
from lmforge.train import checkpoint as ckpt
from lmforge.train import distributed as dp
from lmforge.train import guards
from lmforge.train.device import (
    autocast,
    choose_precision,
    matmul_peak_flops,
    tune_cpu_allocator,
)
from lmforge.train.guards import EarlyStopConfig, SpikeConfig
from lmforge.train.optim import build_optimizer, lr_factor
from lmforge.utils import append_jsonl, read_jsonl


class TrainerConfig(Section):
    max_steps: int = Field(1000, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    # Gradient accumulation: either a number of micro-batches per step, or a tokens-per-step
    # target from which the number is derived (tokens_per_step / (micro_batch * seq_len)).
    grad_accum_steps: int = Field(1, ge=1)
    tokens_per_step: int | None = Field(None, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # the schedule's floor, a fraction of lr
    warmup_steps: int = Field(50, ge=0)
    # if set, warmup = this fraction of max_steps (HF's warmup_ratio)
    warmup_fraction: float | None = Field(None, ge=0, le=1)
    schedule: Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    decay_fraction: float = Field(0.2, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.95,
    )
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, gt=0)  # max gradient norm
    # "muon": Muon for the blocks' matrices, AdamW for embeddings, heads and gains (MuonAdamW).
    optimizer: Literal["adamw", "muon"] = "adamw"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    # Recompute each block in backward instead of keeping its activations: less memory for
    # about a third more compute (`lmforge estimate` prints the peak with and without it).
    # "auto" (classify): on when the estimate's peak would not fit in the available memory.
    activation_checkpointing: bool | Literal["auto"] = False
    device: str = "auto"
    # Under torchrun: "ddp" (replicas; "auto" picks it) or "fsdp" (FSDP2: parameters, gradients
    # and optimizer state sharded across ranks). Ignored in a single process.
    parallel: dp.Parallel = "auto"
    # MFU's denominator per device, in FLOP/s (e.g. 989e12 for an H100's dense bf16); by
    # default the matmul rate measured on this device at start-up.
    peak_flops: float | None = Field(None, gt=0)
    seed: int = 1337
    eval_every: int = Field(100, ge=0)  # 0: evaluate at the end only
    checkpoint_every: int = Field(100, ge=0)  # 0: no checkpoints
    keep_checkpoints: int = Field(2, ge=0)  # 0: keep them all
    log_every: int = Field(10, ge=1)
    # "auto": continue from the newest checkpoint in the output directory if there is one.
    resume: Literal["auto", "never"] = "auto"
    spike: SpikeConfig = Field(default_factory=SpikeConfig)
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    tensorboard: bool = False
    progress: bool = True
    # Stop after this many seconds of training (the demo's "about 10 minutes"); 0 = no limit.
    # The schedule still spans max_steps, so set both together.
    time_limit_s: float = Field(0, ge=0)

    @field_validator("device")
    @classmethod
    def _a_device(cls, name: str) -> str:
        if name != "auto":
            try:
                torch.device(name)
            except RuntimeError:
                raise ValueError("not a device: use auto, cpu, cuda, cuda:1, mps") from None
        return name


class BatchSource(Protocol):
    def next_batch(self) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]
EvalFn = Callable[[nn.Module], dict[str, float]]


def steps_for_epochs(
    epochs: float, units: int, units_per_step: int, cfg: TrainerConfig, stage: str
) -> tuple[int, int]:
    """(steps to train, steps `epochs` imply) for stages whose length is set in epochs:
    `epochs` passes over `units` (rows, batches) at `units_per_step` per optimizer step.

    A trainer.max_steps the user set (in the recipe or as an override) caps that number, and
    says so; it is never silently replaced."""
    from_epochs = max(1, round(epochs * units / units_per_step))
    if "max_steps" in cfg.model_fields_set and cfg.max_steps < from_epochs:
        print(
            f"[{stage}] trainer.max_steps={cfg.max_steps} caps training at {cfg.max_steps} "
            f"steps ({epochs:g} epochs would take {from_epochs})"
        )
        return cfg.max_steps, from_epochs
    return from_epochs, from_epochs


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        model: nn.Module,
        loss_fn: LossFn,
        loader: BatchSource,
        out_dir: str | Path,
        eval_fn: EvalFn | None = None,
        tokens_per_micro_batch: int | None = None,
        flops_per_token: float | None = None,
        lr_overrides: dict[str, float] | None = None,
    ):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        # This rank's share of each step (the whole of it in a single process); the stage built
        # `loader` with the same plan (dp.plan on the same config).
        self.par = dp.plan_for(cfg, tokens_per_micro_batch)
        self.device = dp.device_for(cfg.device)
        # "auto" follows the hardware: bf16 only where it measured faster than fp32
        self.precision_choice = choose_precision(cfg.precision, self.device)
        self.precision = self.precision_choice.precision
        if self.device.type == "cpu":
            tune_cpu_allocator()
        # FSDP: rank 0 keeps an empty host copy to consolidate into at the end (made before
        # the model moves to the device, so the device never holds two)
        self._consolidator = dp.Consolidator(model, self.par)
        self.model = model.to(self.device)
        if cfg.activation_checkpointing == "auto":
            raise ConfigError(
                "trainer.activation_checkpointing=auto is decided from the memory estimate by "
                "`lmforge classify train`; for this stage set it to true or false"
            )
        if cfg.activation_checkpointing and not set_activation_checkpointing(self.model, True):
            raise ConfigError(
                "trainer.activation_checkpointing: this model has no lmforge Transformer blocks"
            )
        # What the training step calls: the model itself, DDP around it, or it sharded by FSDP2.
        self.wrapped = dp.wrap(self.model, self.par, self.device)
        self.loss_fn = loss_fn
        self.loader = loader
        self.eval_fn = eval_fn
        self.flops_per_token = flops_per_token
        self.grad_accum = self.par.grad_accum_steps
        if cfg.optimizer == "muon" and self.par.mode == "fsdp":
            raise ConfigError(
                "trainer.optimizer=muon orthogonalizes whole matrices, which FSDP shards; use "
                "trainer.parallel=ddp with Muon, or trainer.optimizer=adamw under FSDP"
            )
        self.optimizer = build_optimizer(
            self.model,
            cfg.lr,
            cfg.weight_decay,
            cfg.betas,
            cfg.eps,
            lr_overrides=lr_overrides,
            kind=cfg.optimizer,
            matmul_dtype=torch.bfloat16 if self.precision == "bf16" else torch.float32,
        )
        # Compile the loss (model forward + loss) as one graph: the elementwise work around the
        # matmuls (norms, RoPE, SwiGLU, the fp32 cross-entropy) is where CPU time goes.
        self._loss = torch.compile(loss_fn) if cfg.compile else loss_fn
        self.step = 0
        self.tokens_seen = 0
        self.rollbacks = 0
        self.spikes = guards.SpikeDetector(cfg.spike)
        self.ckpt_dir = ckpt.checkpoint_dir(self.out_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.train_seconds = 0.0
        self._tb = None
        # Early stopping: the best metric so far, its step, and evaluations since it improved.
        self.best: dict = {"value": None, "step": None, "bad_evals": 0}
        self.best_path = self.out_dir / "best.safetensors"

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        return {
            "tokens_seen": self.tokens_seen,
            "rollbacks": self.rollbacks,
            "train_seconds": self.train_seconds,
            "loader": self.loader.state_dict(),
            "rng": ckpt.rng_state(),
            "spike_history": list(self.spikes.history),
            "best": self.best,
        }

    def save_checkpoint(self) -> Path:
        # Gathering full tensors is collective; rank 0 writes them.
        weights = dp.model_state(self.model, self.par)
        optimizer = dp.optimizer_state(self.model, self.optimizer, self.par)
        path = self.ckpt_dir / f"step-{self.step:06d}"
        if self.par.is_main:
            ckpt.save_checkpoint(
                self.ckpt_dir,
                self.step,
                weights,
                optimizer,
                self._state(),
                self.cfg.keep_checkpoints,
            )
        dp.barrier(self.par)
        return path

    def _restore(self, path: Path, restore_loader: bool = True) -> None:
        # Rank 0 reads the files; the tensors and the state reach the other ranks by broadcast.
        weights, optimizer, state = ckpt.read_checkpoint(path) if self.par.is_main else (None,) * 3
        dp.load_model_state(self.model, weights, self.par)
        try:
            dp.load_optimizer_state(self.model, self.optimizer, optimizer, self.par)
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{path / 'optimizer.pt'} cannot be restored ({e}). It is from a different set of "
                f"trainable parameters; delete {path} or start a fresh output directory."
            ) from None
        state = dp.broadcast(state, self.par)
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.best = state.get("best", self.best)
        if restore_loader:
            self.loader.load_state_dict(state["loader"])
            ckpt.set_rng_state(state["rng"])
        self.spikes.history.clear()
        self.spikes.history.extend(state["spike_history"])

    def _step_boundary(self) -> tuple:
        """What an interrupted step must be rewound to: the step, the loader's position and the
        generators' states before its batches were drawn (cheap: no copies of tensors)."""
        return (
            self.step,
            self.loader.state_dict(),
            (random.getstate(), np.random.get_state(), torch.get_rng_state()),
        )

    def _save_interrupted(self, boundary: tuple) -> None:
        """Checkpoint the last completed step after an interrupt. A step cut short left its
        batches drawn and gradients half made: rewind the loader and generators to the step's
        start so the resumed run draws the same batches. Under torchrun a rank alone cannot
        save (saving is collective); the last periodic checkpoint stands."""
        if self.par.world_size > 1:
            return
        step, loader_state, (py, np_state, torch_state) = boundary
        if self.step == step:  # interrupted inside the step
            self.optimizer.zero_grad(set_to_none=True)
            self.loader.load_state_dict(loader_state)
            random.setstate(py)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)
        if self.step == 0:
            return
        path = self.save_checkpoint()
        self.log({"event": "interrupted", "step": self.step})
        print(
            f"\n[train] interrupted: step {self.step} saved to {path}; the same command "
            "resumes from it",
            flush=True,
        )

    def maybe_resume(self) -> bool:
        if self.cfg.resume == "never":
            return False
        latest = dp.broadcast(ckpt.latest_checkpoint(self.ckpt_dir), self.par)
        if latest is None:
            return False
        try:
            self._restore(latest)
        except CheckpointError as e:
            saved = self.out_dir / "config.yaml"  # the stage's record of the run's config
            started = f"the config in {saved}" if saved.is_file() else "the config it started with"
            raise CheckpointError(
                f"cannot resume from {latest}: {e} Fix: resume with {started}, or start over "
                "(trainer.resume=never, or --overwrite), or choose another out_dir."
            ) from None
        self.rollbacks = 0
        # Metrics logged after the checkpoint belong to the lost future: drop them so the
        # curve in metrics.jsonl is the one this run actually follows.
        if self.par.is_main and self.metrics_path.exists():
            kept = [m for m in read_jsonl(self.metrics_path) if m.get("step", 0) <= self.step]
            self.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))
        self.log({"event": "resumed", "step": self.step, "checkpoint": latest.name})
        return True

    # ------------------------------------------------------------------ logging
    def log(self, record: dict) -> None:
        if not self.par.is_main:
            return
        append_jsonl(self.metrics_path, record)
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record.get("step", self.step))

    # ------------------------------------------------------------------ one update
    def _micro_step(self, batch: dict[str, torch.Tensor], sync: bool) -> tuple[torch.Tensor, int]:
        weight = batch.pop("loss_weight", None)  # this rank's share of the batch (RankSlice)
        batch = {
            k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }
        # Ranks average gradients once per step, after the last micro-batch, not after each.
        with dp.gradient_sync(self.wrapped, self.par, sync):
            with autocast(self.device, self.precision):
                loss, n_tokens = self._loss(self.wrapped, batch)
            if weight is not None:
                loss = loss * weight
            (loss / self.grad_accum).backward()
        return loss.detach(), int(n_tokens)

    def _set_lr(self) -> float:
        c = self.cfg
        warmup = (
            c.warmup_steps if c.warmup_fraction is None else round(c.warmup_fraction * c.max_steps)
        )
        f = lr_factor(self.step, c.max_steps, warmup, c.schedule, c.min_lr_ratio, c.decay_fraction)
        for g in self.optimizer.param_groups:
            g["lr"] = c.lr * g.get("lr_mult", 1.0) * f
        return c.lr * f

    def train_step(self) -> dict:
        """One optimizer update over grad_accum micro-batches. Returns what happened."""
        lr = self._set_lr()
        losses, tokens = [], 0
        for k in range(self.grad_accum):
            loss, n = self._micro_step(self.loader.next_batch(), sync=k == self.grad_accum - 1)
            losses.append(loss)
            tokens += n
        loss = torch.stack(losses).float().mean().item()
        # The step's loss and tokens over all ranks: every rank takes the same spike decision.
        loss, tokens = dp.all_mean([loss, tokens], self.par)
        tokens = round(tokens * self.par.world_size)
        if self.spikes.is_spike(loss):
            self.optimizer.zero_grad(set_to_none=True)
            return {"spike": True, "loss": loss, "tokens": tokens}
        grad_norm = dp.total_norm(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.spikes.add(loss)
        self.step += 1
        self.tokens_seen += tokens
        return {"spike": False, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}

    def _handle_spike(self, info: dict) -> None:
        """Roll back to the last good checkpoint and keep reading data from where we are,
        which skips the batches that led into the spike (PaLM, Chowdhery et al. 2022, sec. 5.1)."""
        self.rollbacks += 1
        latest = dp.broadcast(ckpt.latest_checkpoint(self.ckpt_dir), self.par)
        record = {
            "event": "loss_spike",
            "step": self.step,
            "loss": info["loss"],
            "rollbacks": self.rollbacks,
        }
        if latest is not None:
            loader_state = self.loader.state_dict()
            self._restore(latest, restore_loader=False)
            self.loader.load_state_dict(loader_state)
            record["rolled_back_to"] = self.step
        else:
            record["rolled_back_to"] = None  # no checkpoint yet: the offending update was skipped
        self.log(record)
        if self.rollbacks > self.cfg.spike.max_rollbacks:
            raise RuntimeError(
                f"{self.rollbacks} loss spikes (last at step {record['step']}, loss {info['loss']:.3g}); "
                "the run is unstable. Lower trainer.lr, raise trainer.warmup_steps, or check the data."
            )

    def _early_stop(self, evaluation: dict) -> bool:
        """Track the best evaluation (saving its weights); True when patience has run out."""
        es = self.cfg.early_stop
        if not es.metric:
            return False
        if es.metric not in evaluation:
            raise KeyError(
                f"trainer.early_stop.metric '{es.metric}' is not among the eval results: {', '.join(evaluation)}"
            )
        value = float(evaluation[es.metric])
        best = self.best["value"]
        better = best is None or (
            value > best + es.min_delta if es.mode == "max" else value < best - es.min_delta
        )
        if better:
            self.best = {
                "value": value,
                "step": self.step,
                "bad_evals": 0,
                "eval": dict(evaluation),
            }
            dp.save_trainable(self.model, self.best_path, self.par)
            return False
        self.best["bad_evals"] += 1
        return self.best["bad_evals"] >= es.patience

    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.precision):
            out = self.eval_fn(self.model)
        self.model.train()
        return dp.broadcast(out, self.par)  # rank 0's numbers decide, on every rank

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.par.is_main:  # what a save killed mid-way (kill -9) left behind
            ckpt.remove_stale_partials(self.ckpt_dir)
        if cfg.tensorboard and self.par.is_main:
            from torch.utils.tensorboard import SummaryWriter  # optional: needs `tensorboard`

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        resumed = self.maybe_resume()
        if self.par.is_main and cfg.progress:
            print(f"[train] {self.precision} on {self.device.type}: {self.precision_choice.reason}")
        if not resumed and self.par.is_main:
            self.metrics_path.unlink(missing_ok=True)
            # trainer.resume=never: an earlier run's checkpoints must not outlive this start
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        # MFU per device: the whole launch's throughput against every rank's peak.
        peak = self.par.world_size * (
            cfg.peak_flops
            or matmul_peak_flops(
                self.device.type, "bfloat16" if self.precision == "bf16" else "float32"
            )
        )
        self.model.train()
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            disable=not cfg.progress or not self.par.is_main,
            desc="train",
            dynamic_ncols=True,
        )
        # Throughput windows run from one log line to the next; evaluation and checkpoint
        # time inside a window is paused out of it (not restarted: its tokens stay counted).
        window_tokens, window_start, paused = 0, time.perf_counter(), 0.0
        remeasured = False
        last_eval: dict[str, float] = {}
        recent_losses: deque[float] = deque(maxlen=max(1, cfg.log_every))
        start_seconds = self.train_seconds
        t_run = time.perf_counter()
        stopped_early = False
        # Ctrl-C (or SIGTERM from a scheduler) between or inside steps: keep the last whole step
        # as a checkpoint, so the same command resumes exactly where the run stood.
        boundary = self._step_boundary()
        try:
            with _sigterm_as_interrupt(self.par):
                while self.step < cfg.max_steps:
                    boundary = self._step_boundary()
                    t0 = time.perf_counter()
                    info = self.train_step()
                    if info["spike"]:
                        self._handle_spike(info)
                        bar.n = self.step
                        bar.refresh()
                        continue
                    self.train_seconds = start_seconds + (time.perf_counter() - t_run)
                    window_tokens += info["tokens"]
                    recent_losses.append(info["loss"])
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        dt = time.perf_counter() - window_start - paused
                        tps = window_tokens / max(dt, 1e-9)
                        mfu = tps * self.flops_per_token / peak if self.flops_per_token else None
                        if mfu is not None and mfu > 1 and not cfg.peak_flops and not remeasured:
                            remeasured = True
                            # The peak was measured while something else held the cores: measure again.
                            peak = max(
                                peak,
                                self.par.world_size
                                * matmul_peak_flops(
                                    self.device.type,
                                    "bfloat16" if self.precision == "bf16" else "float32",
                                ),
                            )
                            mfu = tps * self.flops_per_token / peak
                        record = {
                            "step": self.step,
                            "loss": info["loss"],
                            "lr": info["lr"],
                            "grad_norm": info["grad_norm"],
                            "tokens_seen": self.tokens_seen,
                            "tokens_per_s": tps,
                            "step_ms": 1000 * (time.perf_counter() - t0),
                            "elapsed_s": self.train_seconds,
                        }
                        if mfu is not None:
                            record["mfu"] = mfu
                        if hasattr(
                            self.loader, "realised"
                        ):  # a data mixture: the shares drawn so far
                            record["mix"] = {
                                k: v["share"] for k, v in self.loader.realised().items()
                            }
                        self.log(record)
                        bar.set_postfix(
                            loss=f"{info['loss']:.3f}",
                            tok_s=f"{tps:,.0f}",
                            **({"mfu": f"{mfu:.1%}"} if mfu else {}),
                        )
                        window_tokens, window_start, paused = 0, time.perf_counter(), 0.0
                    # rank 0's clock decides, so that every rank stops at the same step
                    time_up = bool(cfg.time_limit_s) and dp.agree(
                        self.train_seconds >= cfg.time_limit_s, self.par
                    )
                    if self.eval_fn and (
                        (cfg.eval_every and self.step % cfg.eval_every == 0)
                        or self.step == cfg.max_steps
                        or time_up
                    ):
                        t_pause = time.perf_counter()
                        last_eval = self.evaluate()
                        self.log({"step": self.step, **last_eval})
                        paused += (
                            time.perf_counter() - t_pause
                        )  # eval time is not training throughput
                        if self._early_stop(last_eval):
                            stopped_early = True
                            self.log({"event": "early_stop", "step": self.step, **self.best})
                            break
                    if (
                        cfg.checkpoint_every
                        and self.step % cfg.checkpoint_every == 0
                        and self.step < cfg.max_steps
                    ):
                        t_pause = time.perf_counter()
                        self.save_checkpoint()
                        paused += time.perf_counter() - t_pause
                    if time_up:
                        stopped_early = True
                        break
        except KeyboardInterrupt:
            bar.close()
            self._save_interrupted(boundary)
            raise
        bar.close()
        if self.eval_fn and not last_eval:
            last_eval = self.evaluate()
            self.log({"step": self.step, **last_eval})
            self._early_stop(last_eval)
        if self.cfg.early_stop.metric and dp.agree(self.best_path.exists(), self.par):
            # The weights of the best evaluation, not the last one.
            dp.load_trainable(self.model, self.best_path, self.par)
            last_eval = {**last_eval, **self.best.get("eval", {})}
            self.log({"event": "restored_best", **self.best})
        if self._tb is not None:
            self._tb.close()
        # From here the stage evaluates, samples and saves on rank 0 with an ordinary model.
        self.model = self._consolidator.plain(self.model).to(self.device)
        if not self.par.is_main:
            return {"steps": self.step, "rank": self.par.rank, **last_eval}
        return self.summary(recent_losses, last_eval, stopped_early)

    def summary(self, recent_losses, last_eval: dict, stopped_early: bool) -> dict:
        rows = [m for m in read_jsonl(self.metrics_path) if "tokens_per_s" in m]
        # Throughput over the whole run, excluding the first logged window (compilation, warm-up).
        steady = rows[1:] or rows
        tps = float(np.median([r["tokens_per_s"] for r in steady])) if steady else 0.0
        out = {
            "steps": self.step,
            "stopped_early": stopped_early,
            "final_train_loss": float(np.mean(list(recent_losses))) if recent_losses else None,
            **last_eval,
            "tokens_seen": self.tokens_seen,
            "tokens_per_second": tps,
            "wall_seconds": self.train_seconds,
            "rollbacks": sum(
                1 for m in read_jsonl(self.metrics_path) if m.get("event") == "loss_spike"
            ),
            "precision": self.precision,
            "precision_reason": self.precision_choice.reason,
            "compiled": self.cfg.compile,
            "activation_checkpointing": bool(self.cfg.activation_checkpointing),
            "grad_accum_steps": self.grad_accum,
            "world_size": self.par.world_size,
            "parallel": self.par.mode,
            "optimizer": self.cfg.optimizer,
        }
        if rows and "mfu" in rows[-1]:
            out["mfu"] = float(np.median([r["mfu"] for r in steady]))
        return out


@contextlib.contextmanager
def _sigterm_as_interrupt(par):
    """SIGTERM (a scheduler's stop, `kill`) raises KeyboardInterrupt in the training loop, as
    Ctrl-C does, so the run checkpoints before it ends. Only in a single process's main thread:
    torchrun's agent handles its workers' signals itself."""
    if par.world_size > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
