"""AdamW parameter groups and learning-rate schedules.

Weight decay is decoupled (Loshchilov & Hutter 2019) and applied only to matrices that
multiply activations: norms, biases and embeddings are not decayed, as in GPT-2/nanoGPT and
most modern recipes (decaying an embedding row shrinks rare tokens toward zero).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or "norm" in name or "embed" in name or name.endswith(".bias")


def param_groups(
    model: nn.Module, weight_decay: float, lr_overrides: dict[str, float] | None = None
) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups.

    ``lr_overrides`` maps a name substring to a learning-rate multiplier (e.g. a fresh head
    that should learn faster than a pretrained body); each match gets its own groups.
    """
    groups: dict[tuple[bool, float], list[torch.Tensor]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        mult = 1.0
        for pattern, m in (lr_overrides or {}).items():
            if pattern in name:
                mult = m
        groups.setdefault((no_decay(name, p), mult), []).append(p)
    out = []
    for (nd, mult), params in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        out.append({"params": params, "weight_decay": 0.0 if nd else weight_decay, "lr_mult": mult})
    return out


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    fused: bool | None = None,
    lr_overrides: dict[str, float] | None = None,
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, lr_overrides)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    device_type = groups[0]["params"][0].device.type
    if fused is None:
        # The fused kernel exists for CPU and CUDA and runs the whole update in one pass.
        fused = device_type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def lr_factor(
    step: int,
    max_steps: int,
    warmup_steps: int,
    schedule: str,
    min_lr_ratio: float,
    decay_fraction: float = 0.2,
) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based; the update about to happen).

    cosine: linear warmup, then half a cosine down to min_lr_ratio at max_steps.
    wsd: warmup, stable at the peak, then linear decay over the last ``decay_fraction`` of
         steps (Hu et al. 2024, MiniCPM) - a run can be extended by restarting the decay.
    linear: warmup, then linear decay to min_lr_ratio (transformers' default fine-tune schedule
         decays to 0; set min_lr_ratio=0 to match it).
    constant: warmup, then the peak.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress)
    if schedule == "wsd":
        decay_start = max_steps - int(decay_fraction * max_steps)
        if step < decay_start:
            return 1.0
        frac = (step - decay_start) / max(1, max_steps - decay_start)
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - frac)
    raise ValueError(f"unknown schedule '{schedule}' (cosine, wsd, linear, constant)")
