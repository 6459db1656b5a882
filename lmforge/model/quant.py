"""Post-training quantization of the Linear layers, with torchao's formulas.

Symmetric (absmax), per output channel, b bits, q in [qmin, qmax] = [-2^(b-1), 2^(b-1) - 1]:

    scale = max|w| / ((qmax - qmin) / 2)          (int8: max|w| / 127.5)
    q     = clamp(round(w / scale), qmin, qmax)   w ~ q * scale

Asymmetric, per group of `group_size` input columns, q in [0, 2^b - 1], the range always
holding 0 so that 0 is exact:

    lo, hi = min(min(w), 0), max(max(w), 0)
    scale  = (hi - lo) / (qmax - qmin)
    zero   = qmin - round(lo / scale)
    q      = clamp(round(w / scale) + zero, qmin, qmax)    w ~ (q - zero) * scale

Methods (what runs at inference on the CPU):
- ``int8``: W8A8 dynamic. Weights symmetric int8 per channel; activations are quantized on
  the fly and the product runs on an int8 GEMM, rescaled in fp32. Smaller and faster. Two
  kernels, chosen per machine (`int8_kernel`): where the CPU has int8 dot-product
  instructions (VNNI, AMX) oneDNN's ``torch._int_mm`` with each row of activations quantized
  symmetrically; elsewhere (AVX2: ``_int_mm`` runs ~20x slower than an fp32 matmul there)
  fbgemm's dynamic linear, the one ``torch.ao``'s dynamic quantization uses, which quantizes
  the activations per tensor, asymmetric, to 7 bits (``reduce_range``, so that AVX2's 16-bit
  pair sums cannot saturate).
- ``int8-weight``: int8 weights, dequantized for an fp32 matmul. Smaller, not faster.
- ``int4``: asymmetric 4-bit weights per group, two per byte, dequantized for the matmul.
  Smaller (about 1/7 of fp32), not faster.
- ``bf16`` / ``fp16``: the whole model cast; bf16 runs on the CPU's bf16 kernels where it has
  them (AVX-512 bf16 / AMX).

The token embedding is stored as int8 rows (absmax per row) unless an LM head shares it;
norms and the task head stay in full precision (they are small, and the head's errors land
directly on the logits).
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.machine import measured_once
from lmforge.model import QUANT_METHODS

METHODS = QUANT_METHODS
_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# The formulas
# --------------------------------------------------------------------------------------------


def quantize_symmetric(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``w`` (output channel): int8 codes and fp32 scales (see the module docstring)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w = w.float()
    scale = w.abs().amax(dim=-1, keepdim=True).clamp(min=_EPS) / ((qmax - qmin) / 2)
    q = torch.clamp(torch.round(w / scale), qmin, qmax).to(torch.int8)
    return q, scale.squeeze(-1)


def quantize_asymmetric(
    w: torch.Tensor, bits: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group of ``group_size`` columns of each row: uint8 codes in [0, 2^bits - 1], fp32
    scales and zero points of shape (rows, columns / group_size)."""
    rows, cols = w.shape
    check_group_size(group_size)
    if cols % group_size:
        raise ConfigError(
            f"group size {group_size} does not divide the layer width {cols}; pick a divisor "
            f"of {cols} (e.g. {_divisor_near(cols, group_size)})"
        )
    qmin, qmax = 0, 2**bits - 1
    g = w.float().reshape(rows, cols // group_size, group_size)
    lo = g.amin(-1).clamp(max=0)
    hi = g.amax(-1).clamp(min=0)
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=_EPS)
    zero = qmin - torch.round(lo / scale)
    q = torch.clamp(torch.round(g / scale[..., None]) + zero[..., None], qmin, qmax)
    return q.reshape(rows, cols).to(torch.uint8), scale, zero


def dequantize_asymmetric(q, scale, zero, group_size: int) -> torch.Tensor:
    rows, cols = q.shape
    g = q.float().reshape(rows, cols // group_size, group_size)
    return ((g - zero[..., None]) * scale[..., None]).reshape(rows, cols)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(rows, cols) codes in [0, 15] -> (rows, cols / 2) bytes: even column low nibble."""
    if q.shape[-1] % 2:
        raise ConfigError("int4 packing needs an even number of columns")
    return (q[..., 0::2] | (q[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)


def _divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - k))


DEFAULT_GROUP_SIZE = 128  # torchao's and GPTQ's usual int4 group


def check_group_size(group_size) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(
            f"group size {group_size!r} is not a positive whole number; int4 quantizes groups "
            f"of that many input columns (e.g. {DEFAULT_GROUP_SIZE}, or leave it out to have "
            "one picked that divides every layer)"
        )


def group_sizes_that_fit(widths: list[int]) -> list[int]:
    """Every group size that divides all of ``widths`` (the layers' in_features): the divisors
    of their greatest common divisor, ascending."""
    g = math.gcd(*widths)
    return [d for d in range(1, g + 1) if g % d == 0]


def pick_group_size(widths: list[int], preferred: int = DEFAULT_GROUP_SIZE) -> int:
    """The largest group size up to ``preferred`` that divides every width (smaller groups
    are more accurate and larger; this keeps the preferred size's cost as the upper bound)."""
    fits = group_sizes_that_fit(widths)
    return max((d for d in fits if d <= preferred), default=fits[0])


def int4_widths(model: nn.Module) -> dict[str, int]:
    """in_features of each Linear layer int4 would quantize, by name."""
    return {name: model.get_submodule(name).in_features for name in quantizable(model)}


def resolve_group_size(model: nn.Module, group_size: int | None) -> tuple[int, str | None]:
    """The int4 group size for ``model``: ``group_size`` if it divides every quantized layer's
    width (else a ConfigError naming the layers and the sizes that fit all of them), or, when
    None, the largest size up to 128 that fits all of them. Returns (size, note)."""
    widths = int4_widths(model)
    if not widths:
        return (group_size or DEFAULT_GROUP_SIZE), None
    distinct = sorted(set(widths.values()))
    fits = group_sizes_that_fit(distinct)
    if group_size is None:
        chosen = pick_group_size(distinct)
        note = None
        if chosen != DEFAULT_GROUP_SIZE:
            note = (
                f"group size {chosen}: the largest size up to {DEFAULT_GROUP_SIZE} that divides "
                f"every quantized layer's width ({', '.join(map(str, distinct))})"
            )
        return chosen, note
    check_group_size(group_size)
    bad = {n: w for n, w in widths.items() if w % group_size}
    if bad:
        first = next(iter(bad))
        suggest = pick_group_size(distinct, group_size)
        larger = [d for d in fits if d > suggest]
        raise ConfigError(
            f"--group-size {group_size} does not divide the width of {len(bad)} of the "
            f"{len(widths)} layers int4 quantizes (e.g. {first}: {bad[first]} input columns). "
            f"A group size must divide every layer's width ({', '.join(map(str, distinct))}); "
            f"sizes that fit all of them: {', '.join(map(str, fits))}. Use --group-size "
            f"{suggest}"
            + (f" (or {larger[0]}, fewer scales, a little less accurate)" if larger else "")
            + ", or leave --group-size out to pick it automatically"
        )
    return group_size, None


# --------------------------------------------------------------------------------------------
# Quantized layers
# --------------------------------------------------------------------------------------------


def _w8a8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias):
    """y = (q(x) @ q(W)^T) * s_x * s_W + b, activations quantized per row (symmetric absmax)."""
    x = x.float()
    sx = x.abs().amax(dim=-1, keepdim=True).clamp(min=_EPS) / 127.5
    xq = torch.clamp(torch.round(x / sx), -128, 127).to(torch.int8)
    y = torch._int_mm(xq, qweight.t()).float() * sx * scale
    return y if bias is None else y + bias


_W8A8 = {"fn": None}
INT8_KERNELS = ("onednn", "fbgemm")


@functools.cache
def int8_kernel() -> str:
    """The int8 GEMM this machine runs fastest: "onednn" (``torch._int_mm``) or "fbgemm".

    ``LMFORGE_INT8_KERNEL`` forces one. Otherwise, where fbgemm exists (x86), a one-off
    measurement of both at a classifier's layer shape (~0.1 s, cached with the precision
    choice in ~/.cache/lmforge/precision.json by CPU, oneDNN ISA cap, torch and threads).
    Measured: AVX2 (EPYC, 2 threads) _int_mm 270 ms vs fbgemm 6.5 ms vs fp32 11 ms at
    2048 x 384 x 1024; with VNNI/AMX _int_mm is the faster one and keeps per-row scales."""
    forced = os.environ.get("LMFORGE_INT8_KERNEL", "")
    if forced:
        if forced not in INT8_KERNELS:
            raise ConfigError(
                f"LMFORGE_INT8_KERNEL={forced} is not a kernel; use one of {', '.join(INT8_KERNELS)}"
            )
        return forced
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return "onednn"

    def measure() -> str:
        times = _time_int8_kernels()
        return min(times, key=times.get)

    return measured_once("int8", measure, lambda raw: raw in INT8_KERNELS)


def _time_int8_kernels(m: int = 256, k: int = 384, n: int = 1024) -> dict[str, float]:
    """Best of three of each kernel on one (m x k) @ (k x n) product, in seconds."""
    lin = QuantLinear.from_linear(nn.Linear(k, n), "int8", 0)
    x = torch.randn(m, k)
    out = {}
    for kernel in INT8_KERNELS:
        run = functools.partial(lin.forward_with, kernel, x)
        run()
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        out[kernel] = best
    return out


def fbgemm_pack(qweight: torch.Tensor, scale: torch.Tensor, bias) -> torch.Tensor:
    """Our int8 codes and per-channel scales as fbgemm's prepacked weight (bias included)."""
    with warnings.catch_warnings():  # torch flags its quantized tensors as deprecated
        warnings.simplefilter("ignore")
        zeros = torch.zeros(qweight.shape[0], dtype=torch.long)
        qw = torch._make_per_channel_quantized_tensor(qweight, scale.double(), zeros, 0)
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.float())


def w8a8_linear(x, qweight, scale, bias=None) -> torch.Tensor:
    """`_w8a8`, compiled once (dynamic shapes) so that quantizing the activations is one fused
    pass instead of five: 1.3x -> ~2x faster than fp32 per layer on 2 cores
    (benchmarks/classify_speed.py). Falls back to eager where compiling is not possible
    (no C compiler) or is switched off with LMFORGE_COMPILE=0."""
    if _W8A8["fn"] is None:
        _W8A8["fn"] = _w8a8
        if os.environ.get("LMFORGE_COMPILE", "1") != "0":
            _W8A8["fn"] = torch.compile(_w8a8, dynamic=True)
    try:
        return _W8A8["fn"](x, qweight, scale, bias)
    except Exception as e:  # a compiler problem must not take inference down: run eagerly
        if _W8A8["fn"] is _w8a8:
            raise
        warnings.warn(
            f"compiling the int8 matmul failed ({type(e).__name__}); running eagerly", stacklevel=2
        )
        _W8A8["fn"] = _w8a8
        return _w8a8(x, qweight, scale, bias)


class QuantLinear(nn.Module):
    """A Linear whose weight is stored quantized (buffers: what safetensors saves)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, method: str, group_size: int
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group_size = method, group_size
        if method == "int4":
            self.register_buffer(
                "qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
            )
            groups = (out_features, in_features // group_size)
            self.register_buffer("scale", torch.ones(groups))
            self.register_buffer("zero", torch.zeros(groups))
        else:
            self.register_buffer(
                "qweight", torch.zeros(out_features, in_features, dtype=torch.int8)
            )
            self.register_buffer("scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, method: str, group_size: int) -> QuantLinear:
        q = cls(
            linear.in_features, linear.out_features, linear.bias is not None, method, group_size
        )
        w = linear.weight.detach()
        if method == "int4":
            codes, scale, zero = quantize_asymmetric(w, 4, group_size)
            q.qweight.copy_(pack_int4(codes))
            q.scale.copy_(scale)
            q.zero.copy_(zero)
        else:
            codes, scale = quantize_symmetric(w, 8)
            q.qweight.copy_(codes)
            q.scale.copy_(scale)
        if linear.bias is not None:
            q.bias.data.copy_(linear.bias.detach().float())
        return q

    def dequantized_weight(self) -> torch.Tensor:
        if self.method == "int4":
            return dequantize_asymmetric(
                unpack_int4(self.qweight), self.scale, self.zero, self.group_size
            )
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method != "int8":  # weight-only: smaller on disk and in memory, not faster
            return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)
        return self.forward_with(int8_kernel(), x)

    def forward_with(self, kernel: str, x: torch.Tensor) -> torch.Tensor:
        shape, x2 = x.shape, x.reshape(-1, self.in_features)
        if kernel == "fbgemm":
            # Packed once per weight (a buffer loaded or copied later bumps its version).
            key = (self.qweight.data_ptr(), self.qweight._version, self.scale._version)
            if getattr(self, "_packed_key", None) != key:
                self._packed = fbgemm_pack(self.qweight, self.scale, self.bias)
                self._packed_key = key
            y = torch.ops.quantized.linear_dynamic(x2.float().contiguous(), self._packed, True)
        else:
            y = w8a8_linear(x2, self.qweight, self.scale, self.bias)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        gs = f", group_size={self.group_size}" if self.method == "int4" else ""
        return f"{self.in_features}, {self.out_features}, method={self.method}{gs}"


class QuantEmbedding(nn.Module):
    """A token embedding stored as int8 rows with one absmax scale each (symmetric)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.register_buffer(
            "qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8)
        )
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> QuantEmbedding:
        q = cls(emb.num_embeddings, emb.embedding_dim)
        codes, scale = quantize_symmetric(emb.weight.detach(), 8)
        q.qweight.copy_(codes)
        q.scale.copy_(scale)
        return q

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.qweight).float() * self.scale[ids][..., None]


def quantizable(model: nn.Module) -> list[str]:
    """The Linear layers inside the backbone (``model.*``): attention and MLP projections."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("model.layers.")
    ]


def quantize_model(
    model: nn.Module, method: str, group_size: int | None = None, empty: bool = False
) -> nn.Module:
    """Replace the backbone's Linear layers in place (``empty``: shapes only, for loading).
    int4's ``group_size`` must divide every quantized layer's width; None picks one that does
    (see `resolve_group_size`)."""
    if method not in METHODS:
        raise ConfigError(
            f"unknown quantization method '{method}'; use one of {', '.join(METHODS)}"
        )
    low = any(isinstance(m, QuantLinear | QuantEmbedding) for m in model.modules()) or any(
        p.dtype != torch.float32 for p in model.parameters()
    )
    if low:
        raise ConfigError(
            "this model is already quantized or cast; quantize the full-precision run instead"
        )
    if method in ("bf16", "fp16"):
        return model.to(torch.bfloat16 if method == "bf16" else torch.float16)
    if method == "int4":
        group_size, _ = resolve_group_size(model, group_size)
    for name in quantizable(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        if empty:
            q = QuantLinear(
                linear.in_features, linear.out_features, linear.bias is not None, method, group_size
            )
        else:
            q = QuantLinear.from_linear(linear, method, group_size)
        setattr(parent, child, q)
    # The token embedding is often the largest tensor of a small model. Not when an LM head
    # shares it: the head needs the full-precision matrix, and the tie must hold.
    emb = getattr(getattr(model, "model", None), "embed_tokens", None)
    tied = getattr(model.cfg, "tie_embeddings", False) and (
        hasattr(model, "lm_head") or hasattr(model, "decoder")
    )
    if isinstance(emb, nn.Embedding) and not tied:
        n, d = emb.num_embeddings, emb.embedding_dim
        model.model.embed_tokens = (
            QuantEmbedding(n, d) if empty else QuantEmbedding.from_embedding(emb)
        )
    return model
