"""Scaling laws as data: how to spend a compute budget C (training FLOPs) on parameters N and
tokens D, under the published laws, side by side.

Chinchilla's parametric form (Hoffmann et al. 2022, approach 3, App. D.2):

    L(N, D) = E + A / N^alpha + B / D^beta

Minimising it under C = 6 N D gives the compute-optimal allocation

    N_opt = G (C/6)^a,   D_opt = G^-1 (C/6)^b,
    G = (alpha A / (beta B))^(1 / (alpha + beta)),  a = beta / (alpha + beta),  b = alpha / (alpha + beta)

Kaplan et al. (2020) fit loss to one variable at a time, L(N) = (N_c / N)^alpha_N and
L(D) = (D_c / D)^alpha_D (N without embeddings), and along the compute-efficient frontier
N_opt = 1.3e9 (C / PF-day)^0.73, L = (3.1e8 PF-days / C)^0.050. The rule of thumb from
Chinchilla is about 20 tokens per parameter: N = sqrt(C / 120), D = 20 N.

Losses are in nats per token of each paper's own tokenizer and data: they compare laws with
each other, not with a model trained here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PF_DAY = 1e15 * 24 * 3600  # FLOPs in a petaflop/s-day


@dataclass(frozen=True)
class ParametricLaw:
    name: str
    source: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimum(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) for a budget of `flops` = 6 N D."""
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / s)
        return g * (flops / 6) ** (self.beta / s), (flops / 6) ** (self.alpha / s) / g


CHINCHILLA = ParametricLaw(
    "chinchilla", "Hoffmann et al. 2022, approach 3 (App. D.2), rounded coefficients",
    E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
)  # fmt: skip
EPOCH = ParametricLaw(
    "epoch", "Besiroglu et al. 2024 (Epoch AI), Chinchilla replication refit",
    E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
)  # fmt: skip


@dataclass(frozen=True)
class KaplanLaw:
    name: str = "kaplan"
    source: str = (
        "Kaplan et al. 2020, eqs. 1.1-1.3, 6.1 (compute-efficient frontier: early-stopped runs)"
    )
    n_c: float = 8.8e13  # non-embedding parameters
    alpha_n: float = 0.076
    d_c: float = 5.4e13  # tokens
    alpha_d: float = 0.095
    n_e: float = 1.3e9  # N_opt = n_e (C / PF-day)^p_n
    p_n: float = 0.73
    c_c: float = 3.1e8  # PF-days; L(C) = (c_c / C)^alpha_c on the compute-efficient frontier
    alpha_c: float = 0.050

    def loss_n(self, n: float) -> float:
        return (self.n_c / n) ** self.alpha_n

    def loss_d(self, d: float) -> float:
        return (self.d_c / d) ** self.alpha_d

    def optimum(self, flops: float) -> tuple[float, float]:
        n = self.n_e * (flops / PF_DAY) ** self.p_n
        return n, flops / (6 * n)

    def loss(self, flops: float) -> float:
        return (self.c_c / (flops / PF_DAY)) ** self.alpha_c


KAPLAN = KaplanLaw()
LAWS = {"chinchilla": CHINCHILLA, "epoch": EPOCH, "kaplan": KAPLAN, "20-tokens": None}


def twenty_tokens(flops: float) -> tuple[float, float]:
    n = math.sqrt(flops / 120)  # C = 6 N (20 N)
    return n, 20 * n


def predict(flops: float, laws: list[str] | None = None) -> list[dict]:
    """For a budget, each law's compute-optimal N, D, tokens per parameter and loss."""
    if not flops > 0:
        raise ValueError(f"a compute budget must be positive, got {flops}")
    rows = []
    for name in laws or list(LAWS):
        if name not in LAWS:
            raise ValueError(f"unknown law '{name}'; known: {', '.join(LAWS)}")
        law = LAWS[name]
        if law is None:
            n, d = twenty_tokens(flops)
            loss, source = None, "the Chinchilla rule of thumb: about 20 tokens per parameter"
        elif isinstance(law, KaplanLaw):
            (n, d), loss, source = law.optimum(flops), law.loss(flops), law.source
        else:
            (n, d), source = law.optimum(flops), law.source
            loss = law.loss(n, d)
        rows.append({"law": name, "flops": flops, "n_opt": n, "d_opt": d,
                     "tokens_per_param": d / n, "loss": loss, "source": source})  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| law | N_opt (params) | D_opt (tokens) | tokens/param | loss | source |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        loss = f"{r['loss']:.3f}" if r["loss"] is not None else "-"
        lines.append(f"| {r['law']} | {r['n_opt']:.3g} | {r['d_opt']:.3g} | "
                     f"{r['tokens_per_param']:.1f} | {loss} | {r['source']} |")  # fmt: skip
    return "\n".join(lines)
