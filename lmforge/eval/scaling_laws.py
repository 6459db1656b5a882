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

import itertools
import math
from dataclasses import dataclass

import numpy as np

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
    "chinchilla",
    "Hoffmann et al. 2022, approach 3 (App. D.2), rounded coefficients",
    E=1.69,
    A=406.4,
    B=410.7,
    alpha=0.34,
    beta=0.28,
)
EPOCH = ParametricLaw(
    "epoch",
    "Besiroglu et al. 2024 (Epoch AI), Chinchilla replication refit",
    E=1.8172,
    A=482.01,
    B=2085.43,
    alpha=0.3478,
    beta=0.3658,
)


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
        rows.append(
            {
                "law": name,
                "flops": flops,
                "n_opt": n,
                "d_opt": d,
                "tokens_per_param": d / n,
                "loss": loss,
                "source": source,
            }
        )
    return rows


def accounting(
    cfg,
    seq_len: int,
    tokens: float,
    tokens_per_s: float | None = None,
    peak_flops: float | None = None,
) -> dict:
    """What training a model config on `tokens` tokens costs: parameters (total and
    non-embedding, Kaplan's N), training FLOPs as 6ND (N: the matmul parameters, the LM head
    included) and with attention's 12 L H Q T per token (PaLM, App. B), and, given a
    throughput and a peak FLOP/s, the model FLOPs utilisation."""
    counts = cfg.count_params()
    n = counts["matmul"]
    per_token = cfg.flops_per_token(seq_len)
    out = {
        "params": counts["total"],
        "params_non_embedding": counts["non_embedding"],
        "params_matmul": n,
        "tokens": tokens,
        "flops_6nd": 6 * n * tokens,
        "flops": per_token * tokens,
        "flops_per_token": per_token,
        "attention_share": 1 - 6 * n / per_token,
    }
    if tokens_per_s and peak_flops:
        out["mfu"] = tokens_per_s * per_token / peak_flops
    return out


def format_table(rows: list[dict]) -> str:
    lines = [
        "| law | N_opt (params) | D_opt (tokens) | tokens/param | loss | source |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        loss = f"{r['loss']:.3f}" if r["loss"] is not None else "-"
        lines.append(
            f"| {r['law']} | {r['n_opt']:.3g} | {r['d_opt']:.3g} | "
            f"{r['tokens_per_param']:.1f} | {loss} | {r['source']} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Fitting a law to runs
# --------------------------------------------------------------------------------------------


def _huber(r, delta: float):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _objective(theta, log_n, log_d, log_l, delta):
    """Chinchilla's approach 3: Huber loss between log L and
    LSE(a - alpha log N, b - beta log D, e), with A = e^a, B = e^b, E = e^e."""
    from scipy.special import logsumexp  # scipy: only a fit pays for its import

    a, b, e, alpha, beta = theta
    pred = logsumexp(
        np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)]), axis=0
    )
    return _huber(pred - log_l, delta).sum()


# exponents stay positive: a law whose loss rises with N or D is no law (and has no optimum)
_BOUNDS = [(None, None), (None, None), (None, None), (1e-3, 3.0), (1e-3, 3.0)]


def _fit_once(log_n, log_d, log_l, starts, delta):
    from scipy.optimize import minimize  # scipy: only a fit pays for its import

    best = None
    for x0 in starts:
        r = minimize(
            _objective, x0, args=(log_n, log_d, log_l, delta), method="L-BFGS-B", bounds=_BOUNDS
        )
        if best is None or r.fun < best.fun:
            best = r
    return best.x


def fit_parametric(n, d, loss, delta: float = 1e-3, bootstrap: int = 100, seed: int = 0) -> dict:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to runs (Hoffmann et al. approach 3: Huber
    loss, delta 1e-3, on log loss, L-BFGS from a grid of starting points); intervals on the
    exponents from `bootstrap` resamples of the runs. Needs more runs than the 5 parameters."""

    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (n, d, loss))
    if len(n) < 6:
        raise ValueError(
            f"a 5-parameter law needs at least 6 runs to fit; {len(n)} given "
            f"({6 - len(n)} more needed, and a dozen or more for useful intervals)"
        )
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    # Hoffmann et al. start from a grid over all five; a coarser one finds the same minimum on
    # our sweeps (each start is an L-BFGS run)
    grid = itertools.product([0, 10, 20], [0, 10, 20], [-1, 0, 1], [0.2, 0.8], [0.2, 0.8])
    a, b, e, alpha, beta = theta = _fit_once(
        log_n, log_d, log_l, [np.array(g, float) for g in grid], delta
    )
    law = ParametricLaw(
        "fit",
        "fitted to the runs",
        E=float(np.exp(e)),
        A=float(np.exp(a)),
        B=float(np.exp(b)),
        alpha=float(alpha),
        beta=float(beta),
    )
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(n), len(n))
        _, _, _, al, be = _fit_once(log_n[idx], log_d[idx], log_l[idx], [theta], delta)
        samples.append((al, be, be / (al + be)))
    out = {"law": law, "n_runs": len(n)}
    if samples:
        s = np.array(samples)
        for k, name in enumerate(("alpha", "beta", "a")):
            out[f"{name}_interval"] = tuple(float(v) for v in np.percentile(s[:, k], [2.5, 97.5]))
    out["a"] = law.beta / (law.alpha + law.beta)
    return out


def fit_isoflop(flops, n, loss, bootstrap: int = 100, seed: int = 0) -> dict:
    """Chinchilla's approach 2: a parabola in log N through each budget's runs gives its
    loss-minimising N*; power laws N* = k C^a and D* = C / (6 N*) = k' C^b through the minima
    (b = 1 - a). Each budget needs at least 3 sizes, and at least 2 budgets are needed."""

    flops, n, loss = (np.asarray(x, dtype=np.float64) for x in (flops, n, loss))
    budgets = sorted(set(flops.tolist()))
    counts = {c: int((flops == c).sum()) for c in budgets}
    short = {c: k for c, k in counts.items() if k < 3}
    if len(budgets) < 2 or short:
        raise ValueError(
            "approach 2 needs >= 2 FLOP budgets with >= 3 model sizes each; "
            f"have {len(budgets)} budget(s) with sizes {counts}"
        )

    def minima(idx, why=None):
        cs, ns = [], []
        for c in budgets:
            sel = idx[flops[idx] == c]
            if len(set(n[sel].tolist())) < 3:
                continue
            k2, k1, _ = np.polyfit(np.log(n[sel]), loss[sel], 2)
            vertex = np.exp(-k1 / (2 * k2)) if k2 > 0 else math.nan
            # A parabola's vertex outside the sizes tried is an extrapolation, not a
            # measured minimum: this budget cannot place N*.
            if not n[sel].min() <= vertex <= n[sel].max():
                if why is not None:
                    best = n[sel][np.argmin(loss[sel])]
                    side = "smallest" if best == n[sel].min() else "largest"
                    why.append(
                        f"{c:.1e} FLOPs: the {side} model ({best:.3g} params) is best; "
                        f"add {side.replace('est', 'er')} models"
                    )
                continue
            cs.append(c)
            ns.append(vertex)
        return np.array(cs), np.array(ns)

    why: list[str] = []
    cs, ns = minima(np.arange(len(n)), why)
    if len(cs) < 2:
        raise ValueError(
            f"approach 2 needs the loss minimum inside the sizes tried at >= 2 budgets, found "
            f"{len(cs)}: " + "; ".join(why)
        )
    a, log_k = np.polyfit(np.log(cs), np.log(ns), 1)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(bootstrap):
        idx = np.concatenate([rng.choice(np.flatnonzero(flops == c), counts[c]) for c in budgets])
        bc, bn = minima(idx)
        if len(bc) >= 2:
            boot.append(np.polyfit(np.log(bc), np.log(bn), 1)[0])
    out = {
        "a": float(a),
        "b": float(1 - a),
        "k": float(np.exp(log_k)),
        "unbracketed": why,
        "minima": [
            {"flops": float(c), "n_opt": float(v), "d_opt": float(c / (6 * v))}
            for c, v in zip(cs, ns)
        ],
    }
    if boot:
        lo, hi = np.percentile(boot, [2.5, 97.5])
        out["a_interval"] = (float(lo), float(hi))
    return out
