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
  Decoding (at most `DECODE_ROWS` rows: every weight read for a handful of products, so reading
  them is the cost) uses whichever of fbgemm's dynamic linear and ATen's weight-only
  ``_weight_int8pack_mm`` (bf16 activations, bf16 scales) this machine runs faster at one row
  (`int8_decode_kernel`; AVX2, 2 threads, a 0.5B model's layers: fbgemm 20 ms vs 29 ms).
- ``int8-weight``: int8 weights, dequantized for an fp32 matmul. Smaller, not faster.
- ``int4``: asymmetric 4-bit weights per group, two per byte. The matmul is ATen's
  ``_weight_int4pack_mm_for_cpu`` (torchao's int4 CPU layout, repacked once in memory; bf16
  activations, scales and zero points: ``(q - z) * s = (q - 8) * s + (8 - z) * s``), where the
  layer fits it (out_features a multiple of 16, group size 32, 64, 128 or 256); elsewhere the
  weight is dequantized for an fp32 matmul. Smaller (about 1/7 of fp32); faster than
  dequantizing by 1.4x (256 rows) to 10x (one row) on AVX2, still slower than int8 there
  (AVX2 has no instruction that multiplies 4-bit codes: they are unpacked one by one).
- ``bf16`` / ``fp16``: the whole model cast; bf16 runs on the CPU's bf16 kernels where it has
  them (AVX-512 bf16 / AMX).

The token embedding is stored as int8 rows (absmax per row) unless an LM head shares it;
norms and the task head stay in full precision (they are small, and the head's errors land
directly on the logits). An LM head (``int8``, ``int4``) is kept in full precision on disk, tied
or not, and multiplied as int8 rows (`Int8Head`, quantized on first use): in a small LM it is
the largest matrix (Qwen2.5-0.5B: 136M of 494M parameters), read in full for every token.
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
    has_fbgemm = "fbgemm" in torch.backends.quantized.supported_engines
    if forced:
        if forced not in INT8_KERNELS:
            raise ConfigError(
                f"LMFORGE_INT8_KERNEL={forced} is not a kernel; use one of {', '.join(INT8_KERNELS)}"
            )
        if forced == "onednn" and has_fbgemm and not int_mm_is_exact():
            raise ConfigError(
                "LMFORGE_INT8_KERNEL=onednn: torch._int_mm gives wrong sums on this machine "
                "(oneDNN capped below VNNI by ONEDNN_MAX_CPU_ISA?); use fbgemm"
            )
        return forced
    if not has_fbgemm:
        return "onednn"
    if not int_mm_is_exact():
        return "fbgemm"

    def measure() -> str:
        times = _time_int8_kernels()
        return min(times, key=times.get)

    return measured_once("int8", measure, lambda raw: raw in INT8_KERNELS)


@functools.cache
def int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` returns exact int32 sums here. Not where oneDNN is capped below
    VNNI on a CPU that has it (ONEDNN_MAX_CPU_ISA=AVX2 or AVX512_CORE): PyTorch still hands it
    to oneDNN, whose path for that ISA returns sums off by thousands (measured on an AVX-512
    EPYC with the cap). A 32 x 64 x 32 product against int64 arithmetic decides."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (32, 64), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (64, 32), dtype=torch.int8, generator=g)
    return torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())


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


# At most this many rows (tokens in flight) count as decoding: each weight then serves a handful
# of products, and reading the weights is the cost, not the arithmetic.
DECODE_ROWS = 4
INT8_DECODE_KERNELS = ("fbgemm", "int8pack")


@functools.cache
def int8_decode_kernel() -> str:
    """The int8 kernel this machine runs fastest at one row: "fbgemm" (W8A8, activations per
    tensor) or "int8pack" (``_weight_int8pack_mm``: int8 weights, bf16 activations).

    ``LMFORGE_INT8_DECODE_KERNEL`` forces one. Otherwise a one-off measurement (under a second,
    cached like `int8_kernel`'s) on 70 MB of weights, twice the L3 cache of most CPUs, so that
    the weights come from memory as a model's do. Where fbgemm does not exist (ARM): int8pack."""
    forced = os.environ.get("LMFORGE_INT8_DECODE_KERNEL", "")
    if forced:
        if forced not in INT8_DECODE_KERNELS:
            raise ConfigError(
                f"LMFORGE_INT8_DECODE_KERNEL={forced} is not a kernel; use one of "
                f"{', '.join(INT8_DECODE_KERNELS)}"
            )
        return forced
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return "int8pack"

    def measure() -> str:
        times = _time_int8_decode_kernels()
        return min(times, key=times.get)

    return measured_once("int8-decode", measure, lambda raw: raw in INT8_DECODE_KERNELS)


def _version(t: torch.Tensor) -> int:
    # a model loaded under inference_mode holds inference tensors, which keep no version
    # counter; they cannot be changed in place outside inference_mode, so the pointer suffices
    return -1 if t.is_inference() else t._version


def _time_int8_decode_kernels(layers: int = 16, k: int = 896, n: int = 4864) -> dict:
    """Best of five passes of one row through ``layers`` (n x k) int8 layers, in seconds."""
    lins = []
    for _ in range(layers):
        lin = QuantLinear(k, n, False, "int8", 0)
        lin.qweight.copy_(torch.randint(-127, 128, (n, k), dtype=torch.int8))
        lin.scale.uniform_(1e-3, 2e-3)
        lins.append(lin)
    x = torch.randn(1, k)
    out = dict.fromkeys(INT8_DECODE_KERNELS, float("inf"))
    with torch.inference_mode():
        for kernel in INT8_DECODE_KERNELS:
            for lin in lins:  # packs each weight for this kernel
                lin.forward_with(kernel, x)
        for _ in range(5):  # passes interleaved, so a burst of other load falls on both
            for kernel in INT8_DECODE_KERNELS:
                t = time.perf_counter()
                for lin in lins:
                    lin.forward_with(kernel, x)
                out[kernel] = min(out[kernel], time.perf_counter() - t)
    for lin in lins:
        lin._packed.clear()
    return out


def int4pack_fits(out_features: int, group_size: int) -> bool:
    """Whether ATen's int4 CPU kernel takes this layer (its layout's constraints)."""
    return out_features % 16 == 0 and group_size in (32, 64, 128, 256)


def int4pack(qweight, scale, zero) -> tuple[torch.Tensor, torch.Tensor]:
    """Our packed int4 codes as ATen's int4 CPU layout, and its (groups, rows, 2) bf16 scales
    and zero points. Its kernel dequantizes ``(q - 8) * s + zf``; ours is ``(q - z) * s``, the
    same with ``zf = (8 - z) * s``."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(qweight).int(), 1)
    zf = (8 - zero) * scale
    return packed, torch.stack([scale, zf], -1).transpose(0, 1).contiguous().bfloat16()


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

    def _prepared(self, kind: str, build):
        """A kernel's own copy of the weight, made once (a buffer loaded or copied later bumps
        its version, and the copy is made again)."""
        key = (self.qweight.data_ptr(), _version(self.qweight), _version(self.scale))
        cache = self.__dict__.setdefault("_packed", {})
        if cache.get(kind, (None,))[0] != key:
            cache[kind] = (key, build())
        return cache[kind][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "int8":
            rows = x.numel() // self.in_features
            kernel = int8_decode_kernel() if rows <= DECODE_ROWS else int8_kernel()
            return self.forward_with(kernel, x)
        if self.method == "int4" and int4pack_fits(self.out_features, self.group_size):
            return self.forward_with("int4pack", x)
        # weight-only: smaller on disk and in memory, not faster
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)

    def forward_with(self, kernel: str, x: torch.Tensor) -> torch.Tensor:
        shape, x2 = x.shape, x.reshape(-1, self.in_features)
        if kernel == "fbgemm":
            packed = self._prepared(
                "fbgemm", lambda: fbgemm_pack(self.qweight, self.scale, self.bias)
            )
            y = torch.ops.quantized.linear_dynamic(x2.float().contiguous(), packed, True)
        elif kernel == "int8pack":  # its fp32-activation path is ~7x slower: bf16 in and out
            scale = self._prepared("int8pack", lambda: self.scale.bfloat16())
            y = torch.ops.aten._weight_int8pack_mm(x2.bfloat16().contiguous(), self.qweight, scale)
            y = y.float() if self.bias is None else y.float() + self.bias
        elif kernel == "int4pack":  # bf16 only: with fp32 activations it is ~15x slower
            packed, sz = self._prepared(
                "int4pack", lambda: int4pack(self.qweight, self.scale, self.zero)
            )
            xb = x2.bfloat16().contiguous()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, self.group_size, sz)
            y = y.float() if self.bias is None else y.float() + self.bias
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


class Int8Head(nn.Linear):
    """An LM head whose weight stays a full-precision parameter (tied to the embedding or not:
    the same state-dict keys, the same artifact) and is multiplied as int8 rows, symmetric per
    output channel, quantized on first use and again whenever the weight changes."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Head:
        head = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        head.weight = linear.weight  # the same Parameter: a tie to the embedding still holds
        head.bias = linear.bias
        return head

    def _int8(self) -> QuantLinear:
        key = (self.weight.data_ptr(), self.weight._version)
        if self.__dict__.get("_key") != key:
            with torch.no_grad():
                self.__dict__["_q"] = QuantLinear.from_linear(self, "int8", 0)
            self.__dict__["_key"] = key
        return self.__dict__["_q"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._int8()(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, method=int8 (weight kept in full precision)"


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
    # The LM head is read in full for every token generated: int8, as the layers (int4 too:
    # its errors land directly on the logits).
    head = getattr(model, "lm_head", None)
    if method in ("int8", "int4") and type(head) is nn.Linear:
        model.lm_head = Int8Head.from_linear(head)
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
