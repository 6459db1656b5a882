"""AdamW parameter groups, Muon for the hidden matrices, and learning-rate schedules.

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
    model: nn.Module,
    weight_decay: float,
    lr_overrides: dict[str, float] | None = None,
    skip: set[int] = frozenset(),
) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups.

    ``lr_overrides`` maps a name substring to a learning-rate multiplier (e.g. a fresh head
    that should learn faster than a pretrained body); each match gets its own groups.
    """
    groups: dict[tuple[bool, float], list[torch.Tensor]] = {}
    seen: set[int] = set(skip)
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
    kind: str = "adamw",
    matmul_dtype: torch.dtype = torch.float32,
) -> torch.optim.Optimizer:
    """AdamW over `param_groups`, or with ``kind="muon"`` Muon for the blocks' matrices and
    AdamW for everything else (`MuonAdamW`; its iteration in ``matmul_dtype``)."""
    muon = []
    if kind == "muon":
        muon = [p for n, p in model.named_parameters() if p.requires_grad and muon_eligible(n, p)]
        if not muon:
            raise ValueError("optimizer muon: the model has no trainable block matrices")
    taken = {id(p) for p in muon}
    groups = param_groups(model, weight_decay, lr_overrides, skip=taken)
    if not groups and not muon:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    device_type = next(model.parameters()).device.type
    if fused is None:
        # The fused kernel exists for CPU and CUDA and runs the whole update in one pass.
        fused = device_type in ("cpu", "cuda")
    adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    if not muon:
        return adamw
    hidden = Muon(
        [{"params": muon, "lr_mult": 1.0}], lr=lr, weight_decay=weight_decay, dtype=matmul_dtype
    )
    return MuonAdamW(hidden, adamw)


def muon_eligible(name: str, param: torch.Tensor) -> bool:
    """Muon orthogonalizes matrix updates, so it takes the blocks' 2-D weights only; embeddings,
    heads, norms and biases stay with AdamW (Jordan et al. 2024, as modded-nanogpt does)."""
    return param.ndim == 2 and ".layers." in f".{name}" and "embed" not in name


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32):
    """Newton-Schulz's quintic iteration towards U V^T of g = U S V^T (Jordan et al. 2024; the
    coefficients maximise the slope at zero, so singular values land in ~[0.7, 1.2], not 1).

    In ``dtype``: torch.optim.Muon always uses bf16, which CPUs without AMX emulate at ~1
    GFLOP/s (7.5x slower steps for lmforge-d3 on AVX2); the caller picks the training dtype."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.T).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, then the update orthogonalized (`orthogonalize`), for 2-D matrices:
    p <- p (1 - lr wd) - lr * 0.2 sqrt(max(rows, cols)) * O, where the 0.2 sqrt(max) factor
    ("match_rms_adamw", Liu et al. 2025) gives the update AdamW's RMS, so AdamW's learning
    rate serves both. torch.optim.Muon's math, with the iteration's dtype chosen by us."""

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        dtype: torch.dtype = torch.float32,
    ):
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
        )
        super().__init__(params, defaults)
        self.dtype = dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_steps"], self.dtype)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * 0.2 * max(p.shape) ** 0.5)


class MuonAdamW:
    """`Muon` on the hidden matrices and fused AdamW on the rest, stepped as one optimizer:
    one list of param_groups for the schedule, one state_dict for checkpoints."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW):
        self.parts = [muon, adamw]
        self.param_groups = muon.param_groups + adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """Both parts in torch's layout, the parameters numbered through both in turn."""
        out: dict = {"state": {}, "param_groups": []}
        offset = 0
        for part in self.parts:
            sd = part.state_dict()
            out["state"].update({offset + k: v for k, v in sd["state"].items()})
            for g in sd["param_groups"]:
                out["param_groups"].append({**g, "params": [offset + k for k in g["params"]]})
            offset += sum(len(g["params"]) for g in part.param_groups)
        return out

    def load_state_dict(self, state: dict) -> None:
        groups, offset = list(state["param_groups"]), 0
        for part in self.parts:
            mine, groups = groups[: len(part.param_groups)], groups[len(part.param_groups) :]
            n = sum(len(g["params"]) for g in part.param_groups)
            part.load_state_dict(
                {
                    "state": {
                        k - offset: v for k, v in state["state"].items() if offset <= k < offset + n
                    },
                    "param_groups": [
                        {**g, "params": [k - offset for k in g["params"]]} for g in mine
                    ],
                }
            )
            offset += n
        self.param_groups = [g for part in self.parts for g in part.param_groups]


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
