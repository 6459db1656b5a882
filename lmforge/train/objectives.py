"""Losses. Each takes (model, batch) and returns (mean loss, number of target tokens).

Stages hand one of these to the trainer; later issues add mlm, sft-masked, classification,
reward (Bradley-Terry), DPO and distillation here.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.lora import adapters_disabled


def clm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy; targets of -100 are ignored (padding, prompts)."""
    input_ids, targets = batch["input_ids"], batch["targets"]
    logits = model(input_ids)  # (B, T, V)
    # A sum over the scored tokens divided by their count: the mean, and 0 (not NaN) for a
    # micro-batch with nothing to score (SFT rows whose answers were all cut off).
    nats = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    return nats / (targets != -100).sum().clamp(min=1), int(targets.numel())


@torch.no_grad()
def lm_eval(model: nn.Module, batches, token_bytes: torch.Tensor) -> dict[str, float]:
    """Validation loss (nats/token) and bits per byte.

    Bits per byte divides the summed loss by the UTF-8 bytes the target tokens stand for, so
    it compares models with different tokenizers (special tokens stand for no bytes and are
    left out of both sums, as nanochat does).
    """
    device = next(model.parameters()).device
    token_bytes = token_bytes.to(device)
    nats, n_tokens, nats_text, n_bytes = 0.0, 0, 0.0, 0
    for batch in batches:
        input_ids = batch["input_ids"].to(device)
        targets = batch["targets"].to(device)
        logits = model(input_ids)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
        )
        valid = targets.flatten() >= 0
        nats += loss[valid].sum().item()
        n_tokens += int(valid.sum())
        nb = token_bytes[targets.flatten().clamp(min=0)] * valid
        nats_text += (loss * (nb > 0)).sum().item()
        n_bytes += int(nb.sum())
    if n_tokens == 0:
        return {}
    out = {"val_loss": nats / n_tokens, "val_tokens": n_tokens}
    if n_bytes:
        out["val_bpb"] = nats_text / (math.log(2) * n_bytes)
    return out


# --------------------------------------------------------------------------------------------
# Masked language modelling (encoders)
# --------------------------------------------------------------------------------------------


def mask_tokens(
    input_ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int],
    rate: float = 0.3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption at `rate` (ModernBERT uses 30%): of the chosen tokens, 80% become
    <|mask|>, 10% a random token, 10% stay. Special tokens are never chosen.
    Returns (corrupted inputs, labels with -100 where nothing is predicted)."""
    dev = input_ids.device

    def rand(shape):
        return torch.rand(shape, generator=generator, device="cpu").to(dev)

    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for s in special_ids:
        special |= input_ids == s
    chosen = (rand(input_ids.shape) < rate) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    r = rand(input_ids.shape)
    corrupted = input_ids.clone()
    corrupted[chosen & (r < 0.8)] = mask_id
    random_pos = chosen & (r >= 0.8) & (r < 0.9)
    random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator).to(dev)
    corrupted[random_pos] = random_ids[random_pos]
    return corrupted, labels


def mlm_loss_fn(mask_id: int, vocab_size: int, special_ids: list[int], rate: float = 0.3):
    """A (model, batch) -> (loss, n) for a MaskedLM; masking draws from torch's global RNG, which
    the trainer checkpoints, so a resumed run masks exactly as an uninterrupted one."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        inputs, labels = mask_tokens(batch["input_ids"], mask_id, vocab_size, special_ids, rate)
        logits = model(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return loss, int(batch["input_ids"].numel())

    return loss_fn


@torch.no_grad()
def mlm_eval(
    model: nn.Module,
    batches,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int],
    rate: float = 0.3,
    seed: int = 0,
) -> dict[str, float]:
    """Masked-token loss and accuracy on validation rows, with a fixed masking seed so every
    evaluation scores the same corrupted tokens."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    nats, correct, n = 0.0, 0, 0
    for batch in batches:
        inputs, labels = mask_tokens(
            batch["input_ids"].to(device), mask_id, vocab_size, special_ids, rate, g
        )
        logits = model(inputs).float()
        sel = labels >= 0
        nats += F.cross_entropy(logits[sel], labels[sel], reduction="sum").item()
        correct += int((logits[sel].argmax(-1) == labels[sel]).sum())
        n += int(sel.sum())
    if n == 0:
        return {}
    return {"val_loss": nats / n, "val_masked_accuracy": correct / n, "val_masked_tokens": n}


# --------------------------------------------------------------------------------------------
# Sequence classification
# --------------------------------------------------------------------------------------------


def class_weights(train_counts: list[int], scheme: str) -> torch.Tensor | None:
    """Per-class loss weights. "sqrt_inverse": 1/sqrt(count), normalised to mean 1 over classes;
    "balanced": n / (k * count) (scikit-learn's). Classes absent from training get weight 0."""
    if scheme == "none":
        return None
    c = torch.tensor(train_counts, dtype=torch.float64)
    present = c > 0
    w = torch.zeros_like(c)
    if scheme == "sqrt_inverse":
        w[present] = c[present].rsqrt()
        w = w / w[present].mean()
    elif scheme == "balanced":
        w[present] = c.sum() / (int(present.sum()) * c[present])
    else:
        raise ValueError(f"unknown class weight scheme '{scheme}' (none, sqrt_inverse, balanced)")
    return w.float()


def classification_loss_fn(weights: torch.Tensor | None = None, label_smoothing: float = 0.0):
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        w = weights.to(logits.device) if weights is not None else None
        loss = F.cross_entropy(
            logits.float(), batch["labels"], weight=w, label_smoothing=label_smoothing
        )
        return loss, int(batch["attention_mask"].sum())

    return loss_fn


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.7,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al. (2015), as the course writes it:

        alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    T^2 keeps the soft term's gradients on the scale of the hard one's as T grows.
    """
    s, t = student.float(), teacher.float()
    soft = F.kl_div(
        F.log_softmax(s / temperature, -1),
        F.log_softmax(t / temperature, -1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(s, labels, weight=weight)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


def distillation_loss_fn(temperature: float, alpha: float, weights: torch.Tensor | None = None):
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        w = weights.to(logits.device) if weights is not None else None
        loss = distillation_loss(
            logits,
            batch["teacher_logits"].to(logits.device),
            batch["labels"],
            temperature,
            alpha,
            w,
        )
        return loss, int(batch["attention_mask"].sum())

    return loss_fn


def lm_distillation_loss_fn(teacher: nn.Module, temperature: float = 1.0, alpha: float = 0.5):
    """Per-token distillation of a causal LM: `distillation_loss` over every target position,
    KL(teacher || student) averaged over tokens (forward KL, as in Hinton et al. and
    DistilGPT-2), mixed with next-token cross-entropy. The teacher runs under no_grad on the
    same batch, so nothing is cached: a vocabulary-sized distribution per token is too big."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        input_ids, targets = batch["input_ids"], batch["targets"]
        logits = model(input_ids)
        with torch.no_grad():
            t = teacher.to(input_ids.device)(input_ids)
        valid = targets.flatten() >= 0
        loss = distillation_loss(
            logits.flatten(0, 1)[valid],
            t.flatten(0, 1)[valid],
            targets.flatten()[valid],
            temperature,
            alpha,
        )
        return loss, int(targets.numel())

    return loss_fn


# --------------------------------------------------------------------------------------------
# Preferences: a reward model (Bradley-Terry) and DPO
# --------------------------------------------------------------------------------------------


def reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(r_chosen - r_rejected), averaged over pairs."""
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def reward_loss_fn():
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        # chosen and rejected in one forward: the first half of the batch, then the second
        rewards = model(batch["input_ids"])[:, 0]
        n = rewards.shape[0] // 2
        return reward_loss(rewards[:n], rewards[n:]), int((batch["input_ids"] >= 0).sum())

    return loss_fn


def completion_logps(model: nn.Module, input_ids: torch.Tensor, answer: torch.Tensor):
    """Log-probability of each row's answer tokens, **summed** (not averaged) as DPO defines
    it. ``answer`` (B, T) is True where a token belongs to the answer."""
    logits = model(input_ids[:, :-1])
    logp = torch.log_softmax(logits.float(), -1)
    picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (picked * answer[:, 1:]).sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rafailov et al. (2023), the sigmoid loss:

        delta = (logp_c - ref_c) - (logp_r - ref_r);   loss = -log sigmoid(beta * delta)

    and the implicit rewards beta * (logp - ref) that measure how far each answer moved."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, {"chosen": chosen.detach(), "rejected": rejected.detach()}


def dpo_loss_fn(reference, beta: float):
    """DPO's loss and validation metrics for the trainer. `reference` is a frozen model, or None:
    the policy itself with its LoRA adapters switched off (no second copy of the weights)."""

    def logps(model, batch):
        return completion_logps(model, batch["input_ids"], batch["answer"])

    def loss_fn(model, batch):
        policy = logps(model, batch)
        with torch.no_grad(), adapters_disabled(model) if reference is None else nullcontext():
            ref = logps(model if reference is None else reference, batch)
        n = policy.shape[0] // 2
        loss, _ = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta)
        return loss, int(batch["answer"].sum())

    def metrics(model, batches) -> dict:
        model.eval()
        pc, pr, rc, rr = [], [], [], []
        with torch.no_grad():
            for batch in batches:
                policy = logps(model, batch)
                with adapters_disabled(model) if reference is None else nullcontext():
                    ref = logps(model if reference is None else reference, batch)
                n = policy.shape[0] // 2
                pc.append(policy[:n]), pr.append(policy[n:]), rc.append(ref[:n]), rr.append(ref[n:])
        pc, pr, rc, rr = map(torch.cat, (pc, pr, rc, rr))
        loss, rewards = dpo_loss(pc, pr, rc, rr, beta)
        c, r = rewards["chosen"], rewards["rejected"]
        return {
            "val_loss": loss.item(),
            "val_reward_accuracy": (c > r).float().mean().item(),
            "val_chosen_reward": c.mean().item(),
            "val_rejected_reward": r.mean().item(),
            "val_margin": (c - r).mean().item(),
            # the policy's own preference, with no reference: logp(chosen) > logp(rejected)
            "val_policy_prefers_chosen": (pc > pr).float().mean().item(),
            "val_reference_prefers_chosen": (rc > rr).float().mean().item(),
        }

    return loss_fn, metrics
