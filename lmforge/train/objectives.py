"""Losses. Each takes (model, batch) and returns (mean loss, number of target tokens).

Stages hand one of these to the trainer; later issues add mlm, sft-masked, classification,
reward (Bradley-Terry), DPO and distillation here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def clm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy; targets of -100 are ignored (padding, prompts)."""
    input_ids, targets = batch["input_ids"], batch["targets"]
    logits = model(input_ids)  # (B, T, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    return loss, int(targets.numel())


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
